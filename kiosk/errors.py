"""One exception tree for face-kiosk, and the named exit codes the CLI maps it to.

    KioskError
    ├── ConfigError (ValueError)            exit CONFIG        bad or unknown config key/value
    ├── ModelError                          exit MODEL
    │   ├── ModelMissingError (FileNotFoundError)
    │   ├── ModelIntegrityError             sha256 mismatch / unreadable model
    │   └── BackendUnavailableError (ImportError)
    ├── InputError (ValueError)             exit INPUT         unreadable, corrupt, huge image; bad CSV
    │   ├── ImageTooLargeError              a file or image above the size limits (a decompression bomb)
    │   └── WeakPasswordError               a web account's password too short or too long
    ├── FaceError                           exit NO_FACE
    │   ├── NoFaceError
    │   ├── MultipleFacesError
    │   └── QualityError                    rejected by a quality check; carries reasons
    ├── GalleryError                        exit GALLERY
    │   ├── GalleryLockedError
    │   ├── GalleryCorruptError
    │   ├── PersonNotFoundError (LookupError)  exit NOT_FOUND
    │   ├── RecordNotFoundError (LookupError)  exit NOT_FOUND  no access group, schedule or rule of that name
    │   └── DuplicateError                  name taken, or face already enrolled as someone else
    ├── HardwareError                       exit HARDWARE      camera / GPIO / the OSDP serial adapter
    ├── UnsupportedError                    exit FAILURE       an OSDP reader asked to unlock (no relay)
    ├── AccessDeniedError (PermissionError) exit DENIED        admin command run by a non-admin; web: a viewer's change
    │   └── AuthError                                         web login: wrong name or password, no/expired session
    │       └── LoginThrottledError                           too many failed logins; carries retry_after_s
    ├── AccountError                        exit FAILURE       the web's accounts database (kiosk.web.accounts)
    │   ├── AccountNotFoundError (LookupError)  exit NOT_FOUND
    │   └── AccountExistsError              exit DUPLICATE
    ├── ListenError                         exit FAILURE       `kiosk web` cannot open a listener (address in use, ...)
    ├── InsecureStorageError                exit INSECURE      data dir / gallery readable by others or wrong owner
    ├── TemplateKeyError                    exit KEY           gallery encryption key missing, wrong or unreadable
    ├── TamperedError                       exit TAMPERED      event hash chain broken, backup not a gallery
    ├── ScreenError                         exit FAILURE       the loop's sockets cannot be set up (kiosk.screen)
    ├── DoorUnavailableError                exit FAILURE       the loop's sockets cannot be reached (kiosk web)
    ├── WorkerError                         exit FAILURE       `kiosk web`'s model worker died or did not answer
    └── FleetError                          exit FAILURE       a site's fleet: a door refused a live command
        ├── BrokerUnreachableError (ConnectionError)           the site broker cannot be reached
        ├── DoorNoAnswerError (TimeoutError)                   a door did not answer a live command
        └── DoorNotFoundError (LookupError) exit NOT_FOUND     no such door at this hub (or not a hub)

systemd units list CONFIG, MODEL, INSECURE and KEY in ``RestartPreventExitStatus=``: a broken install must not
restart-loop.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILURE = 1
    USAGE = 2
    CONFIG = 3
    MODEL = 4
    INPUT = 5
    NO_FACE = 6
    GALLERY = 7
    NOT_FOUND = 8
    DUPLICATE = 9
    HARDWARE = 10
    DENIED = 11
    INSECURE = 12
    KEY = 13
    TAMPERED = 14
    WATCHDOG = 15  # the internal watchdog found the frame loop stalled, locked the door and exited
    INTERRUPTED = 130


class KioskError(Exception):
    """Base of every error face-kiosk raises on purpose. ``str(err)`` is a one-line message for humans."""

    exit_code: ExitCode = ExitCode.FAILURE


class ConfigError(KioskError, ValueError):
    exit_code = ExitCode.CONFIG


class ModelError(KioskError):
    exit_code = ExitCode.MODEL


class ModelMissingError(ModelError, FileNotFoundError):
    pass


class ModelIntegrityError(ModelError):
    pass


class BackendUnavailableError(ModelError, ImportError):
    pass


class InputError(KioskError, ValueError):
    exit_code = ExitCode.INPUT


class ImageTooLargeError(InputError):
    pass


class FaceError(KioskError):
    exit_code = ExitCode.NO_FACE


class NoFaceError(FaceError):
    pass


class MultipleFacesError(FaceError):
    pass


class QualityError(FaceError):
    def __init__(self, message: str, reasons: list[str] | None = None) -> None:
        super().__init__(message)
        self.reasons = list(reasons or [])


class GalleryError(KioskError):
    exit_code = ExitCode.GALLERY


class GalleryLockedError(GalleryError):
    pass


class GalleryCorruptError(GalleryError):
    pass


class PersonNotFoundError(GalleryError, LookupError):
    exit_code = ExitCode.NOT_FOUND


class RecordNotFoundError(GalleryError, LookupError):
    """No access group, schedule or rule of that name (``kiosk.gallery.access``)."""

    exit_code = ExitCode.NOT_FOUND


class DuplicateError(GalleryError):
    exit_code = ExitCode.DUPLICATE


class HardwareError(KioskError):
    exit_code = ExitCode.HARDWARE


class UnsupportedError(KioskError):
    """The configured door cannot do what was asked: an OSDP reader (``door.driver: osdp``) has no relay to pulse."""


class AccessDeniedError(KioskError, PermissionError):
    exit_code = ExitCode.DENIED


class InsecureStorageError(KioskError):
    exit_code = ExitCode.INSECURE


class TemplateKeyError(KioskError):
    exit_code = ExitCode.KEY


class TamperedError(KioskError):
    exit_code = ExitCode.TAMPERED


class WeakPasswordError(InputError):
    pass


class AuthError(AccessDeniedError):
    """Not logged in: a wrong name or password (one message for both), or no valid session."""


class LoginThrottledError(AuthError):
    """Too many failed logins for an account or from an address; try again after ``retry_after_s`` seconds."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = int(retry_after_s)


class AccountError(KioskError):
    """The web's accounts database cannot be opened, read or written."""


class AccountNotFoundError(AccountError, LookupError):
    exit_code = ExitCode.NOT_FOUND


class AccountExistsError(AccountError):
    exit_code = ExitCode.DUPLICATE


class ListenError(KioskError):
    """``kiosk web`` cannot open a listener: the address is in use or not this host's, or the port is privileged."""


class ScreenError(KioskError):
    """The door loop cannot publish its sockets: runtime folder not usable, or another loop is serving them."""


class DoorUnavailableError(KioskError):
    """The door loop's sockets cannot be reached (not running, not answering, or not ours to talk to)."""


class WorkerError(KioskError):
    """``kiosk web``'s model worker process (``kiosk.web.worker``) died during a request or did not answer."""


class FleetError(KioskError):
    """A site's fleet (``kiosk.fleet``): a live command to a door was refused, or could not be sent."""


class BrokerUnreachableError(FleetError, ConnectionError):
    """The site broker cannot be reached (the hub's nats-server is down, or the address is wrong)."""


class DoorNoAnswerError(FleetError, TimeoutError):
    """A door did not answer a live command in time (offline, or not this site's): the command was not carried out."""


class DoorNotFoundError(FleetError, LookupError):
    """No door of that id at this hub, or this config is not a hub's."""

    exit_code = ExitCode.NOT_FOUND
