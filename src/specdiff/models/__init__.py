"""Model builders: tiny targets and drafters from config (tests, demos) and the bundled defaults."""
