"""Wire contracts shared by every Tandem component: manifest, signatures, drift bins."""

from tandem.protocols.errors import ContractError
from tandem.protocols.manifest import MANIFEST_FILENAME, Manifest, ManifestError, load_manifest, parse_version

__all__ = ["ContractError", "MANIFEST_FILENAME", "Manifest", "ManifestError", "load_manifest", "parse_version"]
