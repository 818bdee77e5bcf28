"""Third-party model zoo: models built from their own packages, checked end to end."""
