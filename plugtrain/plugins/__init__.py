"""Built-in plugins. Each module is registered through this distribution's ``plugtrain`` entry points, exactly as a
third-party plugin is; nothing imports them directly."""
