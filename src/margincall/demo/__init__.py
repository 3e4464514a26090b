"""The demos run by `ape run demo` (a crash with real bot processes, `crash`) and `ape run
story` (one margin call, cure, tranches and a bankruptcy, `story`)."""
