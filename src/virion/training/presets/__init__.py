"""Named training recipes (`virion train --preset NAME`), one TOML file each, shipped as package data."""
