"""rq's own command line on the project's Redis: `rq info -c rqjobs.rqconfig`, `rq worker -c rqjobs.rqconfig ...`.

rq's `--url` takes redis://, rediss:// and unix:// URLs only; for a Sentinel URL rq reads a `SENTINEL` dict from a
config module (`-c`). This module is that config, built from REDIS_URL when rq imports it: `SENTINEL` for a
`redis+sentinel://` URL, `REDIS_URL` otherwise (the embedded server is started if REDIS_URL is unset, as
`rqjobs redis url` does). rq reads its settings from a module's upper-case names, so the work happens on import.
"""

from rqjobs import connections

globals().update(connections.rq_settings())
