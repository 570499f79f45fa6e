"""PatchCore as a model plug-in: options, the module (:mod:`.model`), coreset selection
(:mod:`.coreset`) and the plug-in the driver calls (:mod:`.plugin`)."""
