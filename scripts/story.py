"""The scripted walk-through of margin calls, a cure, a tranche and a bankruptcy (`ape run
story`, `make story`): a shell over `margincall.demo.story`."""

from margincall.demo.story import main

__all__ = ["main"]
