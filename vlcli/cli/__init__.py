"""The command-line layer: parses, calls the library, renders. No training logic lives here."""
