"""The scripted walk-through of one margin call, cure, tranches and a bankruptcy (`ape run
story`, `make story`): a shell over `margincall.demo.story`."""

from margincall.demo.story import main

__all__ = ["main"]
