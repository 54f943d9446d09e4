"""The FAISS tag index (torch-free): build it into a bundle, load it, search it.

infos = build_index("bundle/", kind="auto")          # writes index.faiss + index_infos.json
index = TagIndex.load("bundle/")                      # refuses an index of another bundle
scores, ids = index.search(u, k=50, exclude=[42])     # (B, k) each; ids 0, 1 never returned
"""

from index.build import build_index
from index.errors import IndexMismatchError, TagIndexError
from index.evaluation import recall_at_k
from index.factory import FLAT_MAX_TAGS, IndexPlan, choose_kind, ivf_nlist, plan_index
from index.infos import INDEX_FILE, INFOS_FILE, IndexInfos
from index.tag_index import TagIndex

__all__ = [
    "FLAT_MAX_TAGS",
    "INDEX_FILE",
    "INFOS_FILE",
    "IndexInfos",
    "IndexMismatchError",
    "IndexPlan",
    "TagIndex",
    "TagIndexError",
    "build_index",
    "choose_kind",
    "ivf_nlist",
    "plan_index",
    "recall_at_k",
]
