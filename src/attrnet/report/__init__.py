"""Turning metrics into what people read: JSON values (jsonable), text tables (tables) and PNG figures (plots);
every file is written atomically."""
