"""The core of plugtrain: hook specs, plugin loading, the run spec and the runtime. It never names a component."""
