"""`make bench`: the headline benchmark (bench.engine). The others run on their own:
python -m bench.ingest | bench.http_submit | bench.sse_fanout | bench.scaling."""

import asyncio

from bench.engine import main

asyncio.run(main())
