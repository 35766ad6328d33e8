"""Hardware profiles (what each class of device runs well) and the runtime adapters."""

from tandem.hardware_profiles.loader import (
    Constraints,
    Profile,
    ProfileError,
    RuntimeTarget,
    get_profile,
    load_profile_file,
    load_profiles,
    resolve_profiles,
)

__all__ = [
    "Constraints",
    "Profile",
    "ProfileError",
    "RuntimeTarget",
    "get_profile",
    "load_profile_file",
    "load_profiles",
    "resolve_profiles",
]
