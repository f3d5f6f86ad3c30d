"""What a backend imports: submit jobs and chains, read their status, wait; the CLI."""
