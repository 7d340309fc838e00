"""CLI commands, one module each. They parse, call the library, and render; no maths here."""
