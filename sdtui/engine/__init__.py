"""The inference engine: everything that imports torch. Never imports textual."""
