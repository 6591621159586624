"""The testbed: a planted-target benchmark in the LRS-VQA format, scaled to a tiny LLaVA-NeXT (docs/testbed.md).

* :mod:`lrs_plugin.testbed.scenes` writes ``lrs_synth``: large textured scenes with a few small planted objects,
  questions whose answers need full resolution (shape, colour), a coarse one (presence of a colour), and a count,
  every target box in ``hbox``; training and evaluation scenes come from disjoint random streams.
* :mod:`lrs_plugin.testbed.recall` scores whether a method looked where the answer is (focus tile / token recall).
"""

from __future__ import annotations

__all__: list[str] = []
