"""PaDiM as a model plug-in: options, the module (:mod:`.model`), tiles (:mod:`.tiled`)."""
