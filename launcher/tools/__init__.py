"""Tools that drive jobs rather than run one: `dist-train sweep`, `check`,
`report` and `export`. They import the library (dist_train); the library never
imports them."""
