"""Content checksums of the files a prepared dataset was built from (recorded in ``dataset.json``)."""

from __future__ import annotations

from fairfm.tableio import sha256_file  # noqa: F401  (re-exported: one definition, core, used by reports too)
