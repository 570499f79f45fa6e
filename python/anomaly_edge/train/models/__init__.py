"""Models as plug-ins: one folder per model (its options, torch module, fit and defaults) and
one line in :mod:`.registry`. :mod:`.base` is the contract between a plug-in and the driver."""
