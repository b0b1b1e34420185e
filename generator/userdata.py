"""What each cloud accepts as user-data: its size limit, measured on the bytes the user passes, and whether
gzip-compressed user-data can be passed at all. Sources and excerpts: docs/evidence-user-data.md.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass

from .errors import BakegenError

GENERIC = "generic"


PLAIN, GZIP, MIME_GZIP = "plain", "gzip", "mime-gzip"


@dataclass(frozen=True)
class UserDataForm:
    cloud: str
    title: str
    limit: int | None  # bytes, of what the user passes to the cloud; None: no limit
    # plain: the YAML as it is; gzip: gzip-compressed (a binary file); mime-gzip: a text MIME message whose one
    # part is the gzip-compressed YAML, base64-encoded, for tools that only pass text. cloud-init reads all three.
    encoding: str
    file_name: str


USER_DATA_FORMS = {
    form.cloud: form
    for form in (
        UserDataForm(GENERIC, "generic", None, PLAIN, "user-data.yaml"),
        # EC2: "User data is limited to 16 KB, in raw form, before it is base64-encoded"; the AWS CLI passes a
        # binary file with fileb://.
        UserDataForm("aws", "AWS", 16384, GZIP, "user-data.yaml.gz"),
        # Azure: customData, "The maximum length of the binary array is 65535 bytes"; `az vm create --custom-data`
        # reads the file as text, so a gzip file cannot be passed: the MIME form is text.
        UserDataForm("azure", "Azure", 65535, MIME_GZIP, "user-data.mime"),
        # Compute Engine: a metadata value is a string of at most 256 KiB; gcloud reads --metadata-from-file as
        # text, so the YAML goes as it is.
        UserDataForm("gcp", "Google Cloud", 262144, PLAIN, "user-data.yaml"),
    )
}
USER_DATA_CLOUDS = tuple(USER_DATA_FORMS)


def pack(text: str) -> bytes:
    """gzip, reproducibly: no file name, no time stamp, the best compression zlib has."""
    return gzip.compress(text.encode(), compresslevel=9, mtime=0)


def mime_gzip(text: str) -> str:
    """A MIME multipart message (text) with the gzip-compressed user-data as its one base64-encoded part, of
    type application/x-gzip: cloud-init decodes the part and decompresses it (user_data.py: DECOMP_TYPES)."""
    from email.mime.application import MIMEApplication  # imported when used: a cold start skips email
    from email.mime.multipart import MIMEMultipart

    part = MIMEApplication(pack(text), "x-gzip")
    part.add_header("Content-Disposition", "attachment", filename="user-data.yaml.gz")
    message = MIMEMultipart(boundary=f"bakegen-{hashlib.sha256(text.encode()).hexdigest()[:32]}")
    message.attach(part)
    return message.as_string()


def encode(form: UserDataForm, text: str) -> str | bytes:
    """The user-data as the file the user passes to the cloud."""
    if form.encoding == GZIP:
        return pack(text)
    if form.encoding == MIME_GZIP:
        return mime_gzip(text)
    return text


def check_size(form: UserDataForm, data: bytes, label: str) -> None:
    """Refuse user-data the cloud would refuse at launch: one line with the size, the limit and the way out."""
    if form.limit is None or len(data) <= form.limit:
        return
    how = {PLAIN: "as it is", GZIP: "gzip-compressed", MIME_GZIP: "gzip-compressed in MIME"}[form.encoding]
    raise BakegenError(
        f"{label} is {len(data):,} bytes {how}, over {form.title}'s {form.limit:,}-byte user-data limit: publish the "
        "install script and generate the bootstrap form with --script-url URL, or bake an image with --format packer"
    )


def unpack(data: bytes) -> str:
    """The cloud-config text of user-data in any of bakegen's forms, read as cloud-init reads them."""
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data).decode()
    if b"mime-version:" in data[:4096].lower():
        from email import message_from_bytes

        parts = [p for p in message_from_bytes(data).walk() if p.get_content_type() == "application/x-gzip"]
        if len(parts) != 1:
            raise BakegenError(f"MIME user-data with {len(parts)} gzip parts, not one")
        payload = parts[0].get_payload(decode=True)
        assert isinstance(payload, bytes)
        return gzip.decompress(payload).decode()
    return data.decode()
