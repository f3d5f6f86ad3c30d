"""A WaveSpeed-compatible HTTP server (tornado + Pillow) for tests, demos and load tests.

It is the other side of the wire: nothing here imports ``worker`` or ``producer``.

* ``registry``      models -> request table (``FieldSpec``) -> output maker
* ``validation``    walks a model's request table; 400 messages name the field
* ``images``        Pillow: deterministic pictures, visible edits, multi-image edits, sizes
* ``media``         the media store behind ``/media/<name>``; fetching input images
* ``config``        latency distributions, fault kinds and knobs, the partial-update parser
* ``faults``        the seeded per-request decision "does this fault fire?"
* ``limits``        per-key images-per-minute window and concurrency queue
* ``predictions``   a prediction's lifecycle and its cached wire form
* ``webhooks``      signed webhook delivery
* ``stats``         counters for tests; ``input_key``
* ``state``         wires the parts together; config updates and reset
* ``handlers``      the WaveSpeed v3 endpoints; ``introspection``: ``/_emulator/*``
* ``app``           ``make_app`` and ``EmulatorServer``; ``cli``: ``wavequeue emulator``
"""
