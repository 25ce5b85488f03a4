"""Pictures of the machine: page tables, address spaces, physical memory, and one call's
events, drawn from the machine's real state (never a re-derivation of kernel logic).

Every function returns a matplotlib Figure (a new one, not registered with pyplot, unless
`ax` is given) and shows nothing; the same machine state gives the same picture.
"""

from .bits import pte_bits
from .calls import before_after, event_table
from .graph import table_graph
from .strips import address_spaces, physical_memory
from .tables import page_tables

__all__ = ["address_spaces", "before_after", "event_table", "page_tables", "physical_memory", "pte_bits", "table_graph"]
