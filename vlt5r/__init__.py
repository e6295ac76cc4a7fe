"""``vlt5r``: the toolkit's one command. ``vlt5r --help`` lists the subcommands; the drivers live in
:mod:`vlt5r.drivers` (one thin module per job over the rooms' library functions)."""
