"""``make demo`` / ``python -m ops.demo [--keep]``: the local stack and a showcase.

Brings the stack up (``ops.localstack.stack``), runs a chain (a text-to-image and
three edits) and a batch of 20 jobs through the producer API, writes the chain's
images and a contact sheet to ``./out/``, prints the Flower URL and shuts down
(``--keep`` leaves the stack running until Ctrl-C).
"""
