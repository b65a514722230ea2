"""The docs site's build-time code (docs/gen); the pages themselves are Markdown."""
