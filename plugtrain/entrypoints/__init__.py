"""The command-line interface: argument parsing only, every action lives in :mod:`plugtrain.core`."""
