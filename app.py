"""Entry point for local use and Hugging Face Spaces: build the UI and launch it."""
from ui import build_app, launch_kwargs

if __name__ == "__main__":
    build_app().queue(default_concurrency_limit=1).launch(**launch_kwargs())
