"""What a grant or revocation does outside the engine: kernel set entries and commands."""
