"""STFPM as a model plug-in: options, the module (:mod:`.model`), its training loop."""
