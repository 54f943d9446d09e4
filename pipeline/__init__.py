"""The one pipeline: prepare -> train -> export -> index (`build_bundle`).

It sits above `index` in the dependency stack and below the consumers that need a servable bundle:
the demo (`utpm demo`), the test fixtures, the reliability scenarios and the serving benchmark.
Nothing else chains these stages, so a change to training or indexing reaches all of them.
"""

from pipeline.build import BuiltBundle, DataSource, build_bundle, prepare_data

__all__ = ["BuiltBundle", "DataSource", "build_bundle", "prepare_data"]
