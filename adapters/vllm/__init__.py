"""vLLM plug-in: LAMPS, INFERCEPT or stock ordering and per-session KV handling inside vLLM's V1
scheduler, and the tooling around it.

Two parts:

* the plug-in proper, the modules here — what vLLM itself loads: ``scheduler`` (load it with
  ``--scheduler-cls adapters.vllm.scheduler.LampsScheduler``, or ``LampsAsyncScheduler`` where
  vLLM runs its async scheduler, as on GPUs), the plug-in's state and translation
  (``lamps_core``, no vLLM import: testable without vLLM), how vLLM's loop carries out the core's
  running order and pin releases (``execute``), the waiting-queue view (``queue``), the host swap
  connector (``connector``, named in ``--kv-transfer-config``), its settings (``config``), the pin
  store (``pins``), the idle-engine thread (``housekeeping``) and the hint reader (``turns``);
* :mod:`adapters.vllm.tools` — what runs around a server, never inside vLLM: the server launcher,
  ``profile``, ``validate``, trace replay, ``cluster``, the tiny test model and the
  ``lamps-agent`` sub-commands.

Importing this package does not import vLLM; the modules that subclass vLLM do.
"""
