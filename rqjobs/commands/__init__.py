"""The commands of `rqjobs`, one module per domain, imported only when `cli.main` runs one of them."""
