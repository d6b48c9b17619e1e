"""Data-dependent tempered selection (DDTS): the Rodimus recurrence.

Every form takes the same arguments (raw gate pre-activations and un-normalised keys) and
returns ``(o, final_state)`` (``final_state`` None with ``output_final_state=False``):

* :func:`ddts_naive`: a loop over time written like the paper, the definition of correct.
* :func:`ddts_chunk`: chunkwise-parallel form for training and prefill (memory O(T x chunk)).
* :func:`ddts_recurrent`: the token-by-token form used for decoding.
"""

from rodimus.ops.ddts.chunk import ddts_chunk
from rodimus.ops.ddts.common import ddts_gates
from rodimus.ops.ddts.naive import ddts_naive
from rodimus.ops.ddts.recurrent import ddts_recurrent

__all__ = ["ddts_chunk", "ddts_gates", "ddts_naive", "ddts_recurrent"]
