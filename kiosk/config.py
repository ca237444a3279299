"""Configuration: one YAML file, parsed once at startup into frozen dataclasses.

Every field declares its type and (where it has one) its allowed range or choices in ``field(metadata=...)``; the
parser walks the dataclasses, so unknown keys and bad values fail with the key path and what is allowed:
``recognition.threshold: must be within 0..1, got 1.4``. ``config.example.yaml`` documents every key.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kiosk.errors import ConfigError

ENV_CONFIG = "KIOSK_CONFIG"
MAX_CONFIG_BYTES = 1024 * 1024  # a config file is a few kB; anything this big is a mistake (or an attack)


LIVENESS_MODES = ("off", "passive", "active", "both")
_EXPONENT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")  # 1e-4, 2.5E3: numbers YAML 1.1 leaves as strings
CHALLENGES = ("blink", "turn")
# liveness.passive.fusion: how the last N frames' scores become one (kiosk.liveness.passive.fuse).
PASSIVE_FUSIONS = ("mean", "mean_logit", "median", "min")


def _range(lo: float | None = None, hi: float | None = None, **kw: Any) -> dict[str, Any]:
    return {"min": lo, "max": hi, **kw}


@dataclass(frozen=True)
class ModelsConfig:
    manifest: Path | None = field(default=None, metadata={"help": "manifest path; default models/manifest.yaml"})
    detector: str = field(default="yunet", metadata={"help": "detector model id in the manifest"})
    recognizer: str = field(default="sface", metadata={"help": "recogniser model id in the manifest"})


@dataclass(frozen=True)
class RuntimeConfig:
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    intra_op_threads: int = field(default=2, metadata=_range(1, 64))
    inter_op_threads: int = field(default=1, metadata=_range(1, 64))
    tflite_threads: int = field(default=2, metadata=_range(1, 64))
    allow_spinning: bool = field(
        default=False, metadata={"help": "onnxruntime's idle threads busy-wait (faster only on an idle CPU)"}
    )


@dataclass(frozen=True)
class DetectionConfig:
    input_size: int = field(default=320, metadata=_range(64, 4096, multiple_of=32))
    score_threshold: float | None = field(default=None, metadata=_range(0.0, 1.0))
    retry_score_threshold: float | None = field(default=0.5, metadata=_range(0.0, 1.0))
    nms_iou: float | None = field(default=None, metadata=_range(0.0, 1.0))
    select: str = field(default="largest", metadata={"choices": ("largest", "central", "all")})


@dataclass(frozen=True)
class QualityConfig:
    min_face_px: int = field(default=48, metadata=_range(8, 4096))
    min_sharpness: float = field(default=20.0, metadata=_range(0.0, None))
    min_brightness: float = field(default=40.0, metadata=_range(0.0, 255.0))
    max_brightness: float = field(default=220.0, metadata=_range(0.0, 255.0))
    max_yaw_deg: float = field(default=40.0, metadata=_range(0.0, 90.0))
    max_pitch_deg: float = field(default=35.0, metadata=_range(0.0, 90.0))
    max_roll_deg: float = field(default=30.0, metadata=_range(0.0, 180.0))


@dataclass(frozen=True)
class RecognitionConfig:
    threshold: float | None = field(
        default=None,
        metadata={**_range(-1.0, 1.0), "help": "fixed threshold; null = from fpir and the gallery's size"},
    )
    margin: float = field(default=0.05, metadata=_range(0.0, 2.0))
    fpir: float = field(
        default=1e-3,
        metadata={
            **_range(1e-9, 0.5),
            "help": "chance a stranger is matched to someone, kept as the gallery grows (raises the threshold)",
        },
    )


@dataclass(frozen=True)
class EnrollConfig:
    duplicate_threshold: float | None = field(default=None, metadata=_range(-1.0, 1.0))
    max_templates: int = field(default=10, metadata=_range(1, 100))
    max_image_pixels: int = field(default=40_000_000, metadata=_range(1, None))


@dataclass(frozen=True)
class CameraConfig:
    source: str = field(
        default="0",
        metadata={
            "help": "camera index, /dev/videoN, rtsp/http URL, video file, image folder, %04d pattern, picamera",
            "int_ok": True,  # `source: 0` (YAML reads an integer) is camera index 0
        },
    )
    width: int | None = field(default=640, metadata=_range(16, 8192))
    height: int | None = field(default=480, metadata=_range(16, 8192))
    fps: float | None = field(default=None, metadata=_range(0.1, 240.0))
    fourcc: str | None = field(default=None, metadata={"help": "pixel format for V4L2 cameras, e.g. MJPG or YUYV"})
    stall_timeout_s: float = field(default=5.0, metadata=_range(0.1, 3600.0))
    reconnect_min_s: float = field(default=0.5, metadata=_range(0.01, 600.0))
    reconnect_max_s: float = field(default=30.0, metadata=_range(0.01, 3600.0))
    replay_realtime: bool = True
    loop_replay: bool = False


@dataclass(frozen=True)
class DecisionConfig:
    frames_needed: int = field(default=3, metadata=_range(1, 100))
    window: int = field(default=5, metadata=_range(1, 100))
    cooldown_s: float = field(default=10.0, metadata=_range(0.0, 86400.0))
    deny_interval_s: float = field(default=5.0, metadata=_range(0.0, 86400.0))
    embed_interval_s: float = field(default=0.5, metadata=_range(0.0, 60.0))
    track_iou: float = field(default=0.3, metadata=_range(0.0, 1.0))
    track_max_age_s: float = field(default=1.0, metadata=_range(0.05, 60.0))
    multi_face: str = field(default="largest", metadata={"choices": ("largest", "all")})


@dataclass(frozen=True)
class PassiveLivenessConfig:
    models: tuple[str, ...] = field(
        default=(), metadata={"help": "liveness model ids in the manifest (python -m tools minifasnet)"}
    )
    threshold: float = field(default=0.5, metadata=_range(0.0, 1.0))
    frames: int = field(default=3, metadata=_range(1, 30))
    fusion: str = field(
        default="mean", metadata={"choices": PASSIVE_FUSIONS, "help": "how the last `frames` scores become one"}
    )


@dataclass(frozen=True)
class ActiveLivenessConfig:
    model: str = field(default="face_mesh", metadata={"help": "landmark model id in the manifest"})
    # Defaults from `python -m tools challenge-sim` (docs/liveness.md#challenges): two random prompts cut a replayed
    # video's success 4-8x against one blink, for ~2.5 s more at the door.
    challenges: tuple[str, ...] = ("blink", "turn")
    steps: int = field(default=2, metadata=_range(1, 4))
    timeout_s: float = field(default=5.0, metadata=_range(0.5, 60.0))
    turn_deg: float = field(default=15.0, metadata=_range(3.0, 60.0))
    min_reaction_s: float = field(default=0.2, metadata=_range(0.0, 2.0))
    pause_s: float = field(default=0.75, metadata=_range(0.0, 10.0))


@dataclass(frozen=True)
class LivenessConfig:
    mode: str = field(default="active", metadata={"choices": LIVENESS_MODES})
    passive: PassiveLivenessConfig = PassiveLivenessConfig()
    active: ActiveLivenessConfig = ActiveLivenessConfig()

    @property
    def passive_required(self) -> bool:
        return self.mode in ("passive", "both")

    @property
    def active_required(self) -> bool:
        return self.mode in ("active", "both")


OSDP_FORMATS = ("wiegand26", "raw")
# NOTE: the rates OSDP defines (IEC 60839-11-5 osdp_COMSET); a panel and its readers must agree on one.
OSDP_BAUDS = (9600, 19200, 38400, 57600, 115200, 230400)


@dataclass(frozen=True)
class OsdpConfig:
    """``door.driver: osdp``: the door is a card reader (OSDP peripheral device) of an access panel (door/osdp.py)."""

    port: str | None = field(default=None, metadata={"help": "serial device of the RS-485 adapter, e.g. /dev/ttyUSB0"})
    baud: int = field(default=9600, metadata={"help": "9600, 19200, 38400, 57600, 115200 or 230400; as on the panel"})
    address: int = field(default=0, metadata={**_range(0, 126), "help": "this reader's OSDP address on the bus"})
    scbk_file: Path | None = field(
        default=None, metadata={"help": "Secure Channel base key: 16 bytes, raw or 32 hex characters, mode 0600"}
    )
    insecure_install_mode: bool = field(
        default=False,
        metadata={"help": "run without a key: card numbers may cross the wire in clear text (commissioning only)"},
    )
    format: str = field(
        default="wiegand26",
        metadata={"choices": OSDP_FORMATS, "help": "wiegand26 (H10301, facility code + 16-bit card) or raw bits"},
    )
    facility_code: int = field(default=0, metadata={**_range(0, 255), "help": "wiegand26 only"})
    bits: int = field(default=32, metadata={**_range(1, 64), "help": "raw only: the card number's length in bits"})
    ack_timeout_s: float = field(
        default=1.0, metadata={**_range(0.05, 3.0), "help": "wait this long for the panel to take a card read"}
    )


@dataclass(frozen=True)
class DoorConfig:
    driver: str = field(default="simulated", metadata={"choices": ("simulated", "gpiozero", "jetson", "osdp")})
    relay_pin: int = field(default=17, metadata=_range(0, 1000))
    active_high: bool = True
    pin_factory: str | None = field(
        default=None, metadata={"choices": ("lgpio", "rpigpio", "pigpio", "native", "mock")}
    )
    pulse_s: float = field(default=3.0, metadata=_range(0.05, 600.0))
    max_pulse_s: float = field(default=10.0, metadata=_range(0.05, 600.0))
    contact_pin: int | None = field(default=None, metadata=_range(0, 1000))
    contact_open_is_high: bool = True
    held_open_s: float = field(default=30.0, metadata=_range(1.0, 86400.0))
    exit_button_pin: int | None = field(default=None, metadata=_range(0, 1000))
    osdp: OsdpConfig = OsdpConfig()


@dataclass(frozen=True)
class EventsConfig:
    snapshots: bool = False
    snapshot_dir: Path | None = None
    snapshot_max_mb: float = field(default=200.0, metadata=_range(1.0, 1_000_000.0))
    snapshot_max_age_days: float = field(default=30.0, metadata=_range(0.01, 3650.0))


@dataclass(frozen=True)
class GalleryConfig:
    path: Path | None = None
    busy_timeout_s: float = field(default=5.0, metadata=_range(0.0, 600.0))
    encrypt: bool = field(default=False, metadata={"help": "AES-GCM-encrypt templates at rest (needs [secure] extra)"})
    key_file: Path | None = field(default=None, metadata={"help": "32-byte key file (0600); else the credential"})
    key_credential: str = field(
        default="gallery-key", metadata={"help": "systemd credential name (LoadCredential=) holding the key"}
    )
    backup_dir: Path | None = field(
        default=None, metadata={"help": "where `kiosk backup` writes; default <data_dir>/backups"}
    )
    backups_keep: int = field(default=7, metadata=_range(1, 1000))
    check_permissions: bool = field(
        default=True, metadata={"help": "refuse to start unless data dir is 0700 and gallery 0600, owned by us"}
    )


@dataclass(frozen=True)
class AdminConfig:
    group: str = field(
        default="kiosk-admin", metadata={"help": "besides root, members of this group may enrol and manage people"}
    )


@dataclass(frozen=True)
class SafetyConfig:
    watchdog_s: float = field(
        default=5.0, metadata={**_range(0.5, 600.0), "help": "frame loop stalled this long: relay off and exit"}
    )
    max_frame_errors: int = field(
        default=50, metadata={**_range(1, 1_000_000), "help": "consecutive failing frames before the loop exits"}
    )


LANGUAGES = ("en", "zh-Hans")


@dataclass(frozen=True)
class ScreenConfig:
    """What the door loop publishes for a screen (kiosk.screen) and how the door screen shows it."""

    enabled: bool = field(
        default=True, metadata={"help": "publish state and preview on Unix sockets and take control requests"}
    )
    runtime_dir: Path | None = field(
        default=None,
        metadata={"help": "folder of the loop's sockets; default <data_dir>/run (systemd: /run/face-kiosk)"},
    )
    preview_width: int = field(default=480, metadata=_range(160, 1920))
    preview_fps: float = field(default=10.0, metadata=_range(1.0, 30.0))
    preview_quality: int = field(default=70, metadata=_range(30, 95))
    mirror: bool = field(default=True, metadata={"help": "show the preview mirrored, like a mirror"})
    language: str = field(default="en", metadata={"choices": LANGUAGES})
    show_name: str = field(
        default="first", metadata={"choices": ("full", "first", "none"), "help": "name on the welcome screen"}
    )
    result_s: float = field(default=3.0, metadata={**_range(0.5, 60.0), "help": "how long a result stays up"})
    sound: bool = field(default=False, metadata={"help": "a tone with each result on the door screen"})


@dataclass(frozen=True)
class WebConfig:
    """``kiosk web``: the door screen and the admin app (kiosk.web)."""

    listen: tuple[str, ...] = field(
        default=("127.0.0.1:8080",),
        metadata={
            "help": "HOST:PORT listeners serving the door screen and the admin app; TLS unless loopback "
            "(https://HOST:PORT: TLS on loopback too)"
        },
    )
    door_listen: tuple[str, ...] = field(
        default=(), metadata={"help": "HOST:PORT listeners serving the door screen only"}
    )
    admin_listen: tuple[str, ...] = field(
        default=(), metadata={"help": "HOST:PORT listeners serving the admin app only"}
    )
    tls_cert: Path | None = field(
        default=None,
        metadata={"help": "PEM certificate; default a self-signed one made on first start in <data_dir>/tls"},
    )
    tls_key: Path | None = field(default=None, metadata={"help": "PEM private key for tls_cert"})
    session_idle_min: float = field(default=30.0, metadata=_range(1.0, 10080.0))
    session_max_h: float = field(default=12.0, metadata=_range(0.1, 720.0))
    login_attempts: int = field(
        default=5, metadata={**_range(1, 1000), "help": "failed logins per account and per address before a pause"}
    )
    login_window_s: float = field(default=300.0, metadata=_range(1.0, 86400.0))
    upload_max_mb: float = field(default=20.0, metadata=_range(0.1, 1000.0))
    upload_max_files: int = field(default=20, metadata=_range(1, 500))
    worker_idle_s: float = field(
        default=120.0,
        metadata={**_range(5.0, 86400.0), "help": "the model worker (enrolment, system checks) exits after this idle"},
    )


_SITE_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")  # the fleet's DOOR_ID pattern: a topic level and a slug


def _is_topic_prefix(value: str) -> bool:
    """A topic prefix the bridge can publish under: levels that are not empty and hold no wildcard."""
    if not 0 < len(value) <= 100 or not value.isprintable() or value.startswith("$"):  # $SYS/...: the broker's
        return False
    return all(level and "+" not in level and "#" not in level for level in value.split("/"))


@dataclass(frozen=True)
class HomeAssistantConfig:
    """The hub's optional bridge to the user's MQTT broker for Home Assistant (kiosk.fleet.homeassistant), attached
    to the hub's config as ``hub.home_assistant``. Cross-field and topic checks run on construction, so a bad value
    fails with its key path wherever the section is parsed."""

    enabled: bool = field(default=False, metadata={"help": "publish doors to Home Assistant over MQTT discovery"})
    host: str = field(default="127.0.0.1", metadata={"help": "the MQTT broker (Mosquitto) Home Assistant uses"})
    port: int = field(default=1883, metadata={**_range(1, 65535), "help": "1883 plain, 8883 TLS by convention"})
    username: str | None = field(default=None, metadata={"help": "the bridge's MQTT user; none: anonymous"})
    password_file: Path | None = field(
        default=None, metadata={"help": "file (0600) holding the MQTT password, read at start; needs username"}
    )
    tls: bool = field(default=False, metadata={"help": "TLS to the broker, the certificate checked"})
    ca_file: Path | None = field(default=None, metadata={"help": "PEM CA for the broker's certificate; none: system"})
    client_id: str | None = field(default=None, metadata={"help": "MQTT client id; none: face-kiosk-<site>"})
    keepalive_s: int = field(
        default=60, metadata={**_range(5, 3600), "help": "MQTT keepalive; a lost bridge shows offline ~1.5x this later"}
    )
    reconnect_max_s: int = field(
        default=60, metadata={**_range(1, 3600), "help": "longest wait between reconnect attempts (from 1 s, doubling)"}
    )
    discovery_prefix: str = field(default="homeassistant", metadata={"help": "Home Assistant's MQTT discovery prefix"})
    base_topic: str = field(default="face-kiosk", metadata={"help": "first level(s) of the bridge's own topics"})
    site: str = field(
        default="site", metadata={"help": "this site's id in topics and unique ids (a-z, 0-9, '-'); keep it fixed"}
    )
    include_names: bool = field(
        default=False, metadata={"help": "put the recognised person's name in access events (off: outcome only)"}
    )
    allow_unlock: bool = field(
        default=True, metadata={"help": "Home Assistant may unlock a door (UNLOCK on its lock); false: state only"}
    )
    max_event_age_s: float = field(
        default=300.0,
        metadata={
            **_range(1.0, 86400.0),
            "help": "access events older than this (a door catching up after an outage) are not sent to Home Assistant",
        },
    )
    actor: str = field(
        default="home-assistant", metadata={"help": "who the hub records as the actor of an unlock from Home Assistant"}
    )

    def __post_init__(self) -> None:
        key = "hub.home_assistant"
        for name in ("discovery_prefix", "base_topic"):
            value: str = getattr(self, name)
            if not _is_topic_prefix(value):
                raise ConfigError(
                    f"{key}.{name}: must be MQTT topic levels without wildcards (+, #), empty levels, a leading '$' "
                    f"or a leading or trailing '/', at most 100 characters, got {_show(value)}"
                )
        if not _SITE_ID.match(self.site):
            raise ConfigError(
                f"{key}.site: must be 1-63 of a-z, 0-9 and '-', starting with a letter or digit, got {_show(self.site)}"
            )
        if not self.host.strip():
            raise ConfigError(f"{key}.host: must not be empty")
        if self.password_file is not None and not self.username:
            raise ConfigError(f"{key}.password_file: set {key}.username too (the password is that user's)")
        if self.ca_file is not None and not self.tls:
            raise ConfigError(f"{key}.ca_file: set {key}.tls: true to use a CA file")
        if self.client_id is not None and not (0 < len(self.client_id) <= 128 and self.client_id.isprintable()):
            raise ConfigError(f"{key}.client_id: must be 1-128 printable characters, got {_show(self.client_id)}")
        if not (0 < len(self.actor) <= 64 and self.actor.isprintable()):
            raise ConfigError(f"{key}.actor: must be 1-64 printable characters, got {_show(self.actor)}")


@dataclass(frozen=True)
class LoggingConfig:
    level: str = field(default="INFO", metadata={"choices": ("DEBUG", "INFO", "WARNING", "ERROR")})
    format: str = field(default="text", metadata={"choices": ("text", "json")})


@dataclass(frozen=True)
class FleetConfig:
    """A door in a site run from a hub (kiosk.fleet): where the broker is and who this door is."""

    enabled: bool = field(default=False, metadata={"help": "sync the gallery from the hub and send events to it"})
    server: str = field(default="nats://127.0.0.1:4222", metadata={"help": "the site broker, nats:// or tls://"})
    credentials_file: Path | None = field(
        default=None, metadata={"help": "this door's credentials, made by `kiosk hub add-door` on the hub (0600)"}
    )
    heartbeat_s: float = field(default=5.0, metadata=_range(0.5, 3600.0))
    stale_after_s: float = field(
        default=86400.0,
        metadata={**_range(10.0, 31_536_000.0), "help": "not confirmed in sync with the hub for this long: stale"},
    )
    stale_policy: str = field(
        default="staff",
        metadata={
            "choices": ("continue", "staff", "deny"),
            "help": "a stale door grants everyone (continue), only fleet.staff_group (staff), or no one (deny)",
        },
    )
    staff_group: str = field(default="staff", metadata={"help": "the group still let in by a stale door"})
    keep_events_days: float | None = field(
        default=90.0,
        metadata={
            **_range(0.0, 36500.0),
            "help": "delete events older than this once the hub holds them (their chain stays verifiable); "
            "null: keep all",
        },
    )


@dataclass(frozen=True)
class HubConfig:
    """``kiosk hub``: the site's source of truth (kiosk.fleet.hub)."""

    broker: str = field(
        default="embedded",
        metadata={
            "choices": ("embedded", "external"),
            "help": "embedded: the hub runs nats-server (from the fleet extra) itself; external: connect to server",
        },
    )
    server: str = field(
        default="nats://127.0.0.1:4222", metadata={"help": "the broker's URL (embedded: where it listens)"}
    )
    heartbeat_timeout_s: float = field(
        default=15.0, metadata={**_range(1.0, 86400.0), "help": "a door not heard from for this long is offline"}
    )
    tls: str = field(
        default="auto",
        metadata={
            "choices": ("auto", "on", "off"),
            "help": "embedded broker: TLS with a self-signed certificate the doors pin (auto: unless loopback)",
        },
    )
    home_assistant: HomeAssistantConfig = HomeAssistantConfig()


@dataclass(frozen=True)
class Config:
    data_dir: Path = Path("~/.local/share/face-kiosk")
    models: ModelsConfig = ModelsConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    detection: DetectionConfig = DetectionConfig()
    quality: QualityConfig = QualityConfig()
    recognition: RecognitionConfig = RecognitionConfig()
    enroll: EnrollConfig = EnrollConfig()
    gallery: GalleryConfig = GalleryConfig()
    camera: CameraConfig = CameraConfig()
    decision: DecisionConfig = DecisionConfig()
    liveness: LivenessConfig = LivenessConfig()
    door: DoorConfig = DoorConfig()
    events: EventsConfig = EventsConfig()
    logging: LoggingConfig = LoggingConfig()
    admin: AdminConfig = AdminConfig()
    safety: SafetyConfig = SafetyConfig()
    screen: ScreenConfig = ScreenConfig()
    web: WebConfig = WebConfig()
    fleet: FleetConfig = FleetConfig()
    hub: HubConfig = HubConfig()
    origin: Path | None = field(default=None, metadata={"help": "file this config came from (not a config key)"})

    @property
    def gallery_path(self) -> Path:
        return (self.gallery.path or self.data_dir / "gallery.db").expanduser()

    @property
    def snapshot_dir(self) -> Path:
        return (self.events.snapshot_dir or self.data_dir / "snapshots").expanduser()

    @property
    def backup_dir(self) -> Path:
        return (self.gallery.backup_dir or self.data_dir / "backups").expanduser()

    @property
    def runtime_dir(self) -> Path:
        """Where the door loop's sockets live (kiosk.screen)."""
        return (self.screen.runtime_dir or self.data_dir / "run").expanduser()

    @property
    def web_db_path(self) -> Path:
        """The admin app's accounts and sessions (kiosk.web.accounts)."""
        return (self.data_dir / "web.db").expanduser()

    @property
    def fleet_dir(self) -> Path:
        """The hub's fleet secrets and broker store, or a door's fleet state (kiosk.fleet)."""
        return (self.data_dir / "fleet").expanduser()

    @property
    def tls_dir(self) -> Path:
        return (self.data_dir / "tls").expanduser()


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


_REPR = reprlib.Repr()  # keyword arguments only from Python 3.12
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 2, 60, 60, 40
_REPR.maxtuple = _REPR.maxlist = _REPR.maxdict = _REPR.maxset = _REPR.maxfrozenset = 4


def _show(value: Any) -> str:
    """A short one-line repr for error messages: a YAML alias bomb or a megabyte string must not be printed whole."""
    try:
        return _REPR.repr(value)
    except ValueError:  # an integer over sys.get_int_max_str_digits() digits cannot be printed at all
        return f"<a {type(value).__name__} too large to print>"


def _key_text(key: Any) -> str:
    """A config key as written, or its short repr when it would not print as one plain line."""
    return key if isinstance(key, str) and key.isprintable() and len(key) <= 60 else _show(key)


def _path_text(path: Path | str) -> str:
    """A file name for a message: as is, or repr'd when it holds newlines or other unprintable characters."""
    text = str(path)
    return text if text.isprintable() else repr(text)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: must be a mapping, got {type(value).__name__}")
        return _build(tp, value, key)  # type: ignore[arg-type]
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: must be a list, got {type(value).__name__}")
        (item_tp, _) = typing.get_args(tp)
        return tuple(_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: must be true or false, got {_show(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: must be an integer, got {_show(value)}")
        return value
    if tp is float:
        if isinstance(value, str) and _EXPONENT.fullmatch(value.strip()):
            value = float(value)  # PyYAML (YAML 1.1) reads `1e-4` as a string: only `1.0e-4` is a float to it
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: must be a number, got {_show(value)}")
        try:
            number = float(value)
        except OverflowError:  # an integer with hundreds of digits
            number = math.inf
        if not math.isfinite(number):  # .nan passes every range check, .inf every open-ended one
            raise ConfigError(f"{key}: must be a finite number, got {_show(value)}")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: must be a string, got {_show(value)}")
        if "\0" in value:
            raise ConfigError(f"{key}: must not contain a NUL character, got {_show(value)}")
        return value
    if tp is Path:
        if not isinstance(value, str) or not value or "\0" in value:
            raise ConfigError(f"{key}: must be a path string, got {_show(value)}")
        return Path(value).expanduser()
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")  # pragma: no cover - schema bug


def _check(value: Any, meta: typing.Mapping[str, Any], key: str) -> None:
    if value is None:
        return
    lo, hi = meta.get("min"), meta.get("max")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f"{lo if lo is not None else '-inf'}..{hi if hi is not None else 'inf'}"
        raise ConfigError(f"{key}: must be within {bounds}, got {_show(value)}")
    mult = meta.get("multiple_of")
    if mult and value % mult:
        raise ConfigError(f"{key}: must be a multiple of {mult}, got {_show(value)}")
    choices = meta.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"{key}: must be one of {', '.join(choices)}, got {_show(value)}")


def _build(cls: type[Any], data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "origin"}
    for key in data:
        if key not in fields:
            path = f"{prefix}.{_key_text(key)}" if prefix else _key_text(key)
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{path}: unknown key (allowed here: {known})")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in data:
            continue
        path = f"{prefix}.{name}" if prefix else name
        raw = data[name]
        if isinstance(raw, bool) and "off" in (f.metadata.get("choices") or ()):
            raw = "on" if raw else "off"  # YAML 1.1 reads a bare `off` as false: `mode: off` means "off"
        elif isinstance(raw, int) and not isinstance(raw, bool) and f.metadata.get("int_ok"):
            raw = str(raw)
        value = _coerce(raw, hints[name], path)
        _check(value, f.metadata, path)
        kwargs[name] = value
    return cls(**kwargs)


def _cross_checks(cfg: Config) -> None:
    d = cfg.decision
    if d.frames_needed > d.window:
        raise ConfigError(
            f"decision.frames_needed: must be at most decision.window ({d.window}), got {d.frames_needed}"
        )
    door = cfg.door
    if door.pulse_s > door.max_pulse_s:
        raise ConfigError(f"door.pulse_s: must be at most door.max_pulse_s ({door.max_pulse_s}), got {door.pulse_s}")
    _osdp_checks(door, cfg.safety)
    cam = cfg.camera
    if cam.reconnect_min_s > cam.reconnect_max_s:
        raise ConfigError(
            f"camera.reconnect_min_s: must be at most camera.reconnect_max_s ({cam.reconnect_max_s}), "
            f"got {cam.reconnect_min_s}"
        )
    live = cfg.liveness
    for i, name in enumerate(live.active.challenges):
        if name not in CHALLENGES:
            raise ConfigError(
                f"liveness.active.challenges[{i}]: must be one of {', '.join(CHALLENGES)}, got {_show(name)}"
            )
    if not live.active.challenges:
        raise ConfigError("liveness.active.challenges: must name at least one of " + ", ".join(CHALLENGES))
    if live.active.min_reaction_s >= live.active.timeout_s:
        raise ConfigError(
            f"liveness.active.min_reaction_s: must be below liveness.active.timeout_s ({live.active.timeout_s}), "
            f"got {live.active.min_reaction_s}"
        )
    if len(set(live.passive.models)) != len(live.passive.models):
        raise ConfigError(f"liveness.passive.models: lists a model twice: {_show(list(live.passive.models))}")
    web = cfg.web
    if (web.tls_cert is None) != (web.tls_key is None):
        raise ConfigError("web.tls_cert: set both web.tls_cert and web.tls_key, or neither (self-signed)")
    if cfg.fleet.enabled and cfg.fleet.credentials_file is None:
        raise ConfigError("fleet.credentials_file: required with fleet.enabled (made by `kiosk hub add-door ID`)")
    for key, url in (("fleet.server", cfg.fleet.server), ("hub.server", cfg.hub.server)):
        if not url.startswith(("nats://", "tls://")):
            raise ConfigError(f"{key}: must be a nats:// or tls:// URL, got {_show(url)}")
    q = cfg.quality
    if q.min_brightness >= q.max_brightness:
        raise ConfigError(
            f"quality.min_brightness: must be below quality.max_brightness ({q.max_brightness}), got {q.min_brightness}"
        )


def _osdp_checks(door: DoorConfig, safety: SafetyConfig) -> None:
    o = door.osdp
    if o.baud not in OSDP_BAUDS:
        raise ConfigError(f"door.osdp.baud: must be one of {', '.join(map(str, OSDP_BAUDS))}, got {_show(o.baud)}")
    if door.driver != "osdp":
        return
    if not o.port:
        raise ConfigError("door.osdp.port: required with door.driver osdp (the RS-485 adapter, e.g. /dev/ttyUSB0)")
    if o.scbk_file is None and not o.insecure_install_mode:
        raise ConfigError(
            "door.osdp.scbk_file: required with door.driver osdp (the panel's Secure Channel key for this reader); "
            "door.osdp.insecure_install_mode: true runs without one, card numbers then cross the wire in clear text"
        )
    if o.ack_timeout_s >= safety.watchdog_s:  # the loop waits this long on a grant: the watchdog must not fire
        raise ConfigError(
            f"door.osdp.ack_timeout_s: must be below safety.watchdog_s ({safety.watchdog_s}), got {o.ack_timeout_s}"
        )


def _resolve_source(source: str, base: Path) -> str:
    """A relative file/folder in ``camera.source`` is relative to the config file, like every other path in it;
    camera indices, devices, URLs and ``picamera`` are left alone."""
    if source.isdigit() or "://" in source or source == "picamera" or source.startswith("/") or source.startswith("~"):
        return str(Path(source).expanduser()) if source.startswith("~") else source
    return str(base / source)


def parse_config(data: Any, source: Path | None = None) -> Config:
    """Turn an already-loaded YAML document into a ``Config`` (raises ``ConfigError`` naming the key)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        where = _path_text(source) if source is not None else "config"
        raise ConfigError(f"{where}: the top level must be a mapping, got {type(data).__name__}")
    cfg: Config = _build(Config, data)
    base = source.parent if source is not None else Path.cwd()

    def resolve(p: Path) -> Path:
        # Relative paths in a config file are relative to that file, not to the working directory.
        p = p.expanduser()
        return p if p.is_absolute() else base / p

    cfg = dataclasses.replace(
        cfg,
        origin=source,
        data_dir=resolve(cfg.data_dir),
        gallery=dataclasses.replace(
            cfg.gallery,
            path=resolve(cfg.gallery.path) if cfg.gallery.path else None,
            key_file=resolve(cfg.gallery.key_file) if cfg.gallery.key_file else None,
            backup_dir=resolve(cfg.gallery.backup_dir) if cfg.gallery.backup_dir else None,
        ),
        models=dataclasses.replace(cfg.models, manifest=resolve(cfg.models.manifest) if cfg.models.manifest else None),
        events=dataclasses.replace(
            cfg.events, snapshot_dir=resolve(cfg.events.snapshot_dir) if cfg.events.snapshot_dir else None
        ),
        camera=dataclasses.replace(cfg.camera, source=_resolve_source(cfg.camera.source, base)),
        door=dataclasses.replace(
            cfg.door,
            osdp=dataclasses.replace(
                cfg.door.osdp, scbk_file=resolve(cfg.door.osdp.scbk_file) if cfg.door.osdp.scbk_file else None
            ),
        ),
        screen=dataclasses.replace(
            cfg.screen, runtime_dir=resolve(cfg.screen.runtime_dir) if cfg.screen.runtime_dir else None
        ),
        web=dataclasses.replace(
            cfg.web,
            tls_cert=resolve(cfg.web.tls_cert) if cfg.web.tls_cert else None,
            tls_key=resolve(cfg.web.tls_key) if cfg.web.tls_key else None,
        ),
    )
    _cross_checks(cfg)
    return cfg


def load_config(path: Path | str | None = None) -> Config:
    """Load ``path``, else ``$KIOSK_CONFIG``, else built-in defaults."""
    if path is None:
        env = os.environ.get(ENV_CONFIG)
        path = Path(env) if env else None
    if path is None:
        return parse_config({})
    path = Path(path)
    shown = _path_text(path)
    try:
        # Read at most one byte past the limit: `-c /dev/zero` or a runaway generated file must not fill memory.
        with path.open("rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(f"config file {shown} is larger than {MAX_CONFIG_BYTES // 1024} KiB: not a config file")
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {shown} not found") from None
    except OSError as exc:
        raise ConfigError(f"config file {shown} cannot be read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {shown} is not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        # ReaderError (a control character) has no `problem`; every YAML message may span lines: make it one.
        problem = getattr(exc, "problem", None) or getattr(exc, "reason", None) or exc
        why = " ".join(str(problem).split())
        raise ConfigError(f"config file {shown}{where}: not valid YAML ({why})") from None
    except RecursionError:
        raise ConfigError(f"config file {shown}: not valid YAML (nested too deeply)") from None
    except ValueError:  # PyYAML's int() of a number with thousands of digits
        raise ConfigError(f"config file {shown}: not valid YAML (a number with too many digits)") from None
    return parse_config(data, source=path)


def iter_fields(cls: type[Any] = Config, prefix: str = "") -> typing.Iterator[tuple[str, Any, Any]]:
    """Yield (key path, default, metadata) for every leaf key; used to check the example config is complete."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name == "origin":
            continue
        path = f"{prefix}.{f.name}" if prefix else f.name
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from iter_fields(tp, path)  # type: ignore[arg-type]
        else:
            yield path, f.default, f.metadata
