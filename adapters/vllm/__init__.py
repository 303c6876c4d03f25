"""vLLM plug-in: LAMPS, INFERCEPT or stock ordering and per-session KV handling inside vLLM's V1
scheduler.  Load it with ``--scheduler-cls adapters.vllm.scheduler.LampsScheduler`` (or
``LampsAsyncScheduler`` where vLLM runs its async scheduler, as on GPUs).  Importing this package
does not import vLLM; the modules that subclass vLLM do.
"""
