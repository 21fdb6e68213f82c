#!/usr/bin/env python3
"""An independent reader of tapevault cartridges, written from docs/FORMAT.md alone.

It shares no code with tapevault: it reads the virtual cartridge container (FORMAT.md
section 13), decodes every block (sections 3-4), unwraps the exported key with its
passphrase (section 12), authenticates and decrypts every record, checks every CRC,
tag, sequence number, part number, trailer count and (keyed) digest (section 11), and
rebuilds a disk at a point in time from a full and its incrementals (section 10).

    read_cartridge.py --key FILE --passphrase-file FILE CART_DIR... --list
    read_cartridge.py --key FILE --passphrase-file FILE CART_DIR... --image UUID --out DISK
    read_cartridge.py ... --snapshot-out FILE   (the newest catalog snapshot, checked)

--key takes the binary export or its paper form (`key export --paper`); without --key,
--escrow unwraps the key from a volume label's escrow blob. A cartridge without
encryption needs neither.

Exit codes: 0 ok, 2 usage, 3 a check failed (damage, tampering), 5 key or passphrase.
Needs: cryptography (AES-GCM), argon2-cffi (argon2id), blake3, zstandard.
"""

import argparse
import json
import os
import struct
import sys
import zlib
import uuid as uuidlib

try:
    import blake3
    import zstandard
    from argon2.low_level import Type as Argon2Type
    from argon2.low_level import hash_secret_raw
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
except ImportError as e:  # the Rust test looks for this line to skip
    print(f"spec-reader: missing Python module: {e.name}", file=sys.stderr)
    sys.exit(4)


class Integrity(Exception):
    """A check of the format failed (exit 3)."""


class KeyProblem(Exception):
    """The key export or its passphrase is wrong (exit 5)."""


# ----------------------------------------------------------------- constants (spec)

MAGIC = b"TAPEVLT\x00"
PREFIX_LEN = 28
MAX_BLOCK = 1048576
MAX_EXT = 16384
MAX_PLAIN = 983040
MAX_EXTENTS = 2048
SUPPORTED_MAJORS, SUPPORTED_MINOR = (1, 2), 1  # majors differ only in the content digest (4.4)
DIGEST_PIECE = 65536  # major 2: data extents cut at every 64 KiB of disk offset (4.4)
EXT_COPY_OF = 0x0001  # 1.1: image header, 16 bytes: the original a tape-to-tape copy duplicates
EXT_SYNTHETIC_OF = 0x0002  # 1.1: image header, 16 bytes: the image a synthetic full reproduces

T_LABEL, T_IHDR, T_DATA, T_ITRL = 0x0001, 0x0010, 0x0011, 0x0012
T_SHDR, T_CHUNK, T_STRL, T_EOS = 0x0020, 0x0021, 0x0022, 0x0030

FINGERPRINT_CONTEXT = "tapevault 2026-11 record key fingerprint v1"
DIGEST_KEY_CONTEXT = "tapevault 2026-11 content digest key v1"
PAPER_LINE_CONTEXT = "tapevault 2026-11 paper key line checksum v1"
PAPER_WHOLE_CONTEXT = "tapevault 2026-11 paper key checksum v1"
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

KEYFILE_MAGIC = b"TVKEYv1\n"
ESCROW_MAGIC = b"TVESCRW\n"

KIND_NAMES = {1: "full", 2: "incremental", 3: "copy"}
STATUS_NAMES = {1: "complete", 2: "continued", 3: "aborted"}


def crc32(b):
    return zlib.crc32(b) & 0xFFFFFFFF


def derive_key(context, material):
    h = blake3.blake3(derive_key_context=context)
    h.update(material)
    return h.digest()


def fingerprint_of(key):
    return derive_key(FINGERPRINT_CONTEXT, key)[:16]


def u(b):
    return str(uuidlib.UUID(bytes=bytes(b)))


# ----------------------------------------------------------------- key export (section 12)


def b32_char(c):
    c = c.upper()
    c = {"O": "0", "I": "1", "L": "1"}.get(c, c)
    i = CROCKFORD.find(c)
    if i < 0:
        raise KeyProblem(f"paper key: character {c!r} is not Crockford base32")
    return i


def b32_encode(data):
    out, acc, bits = [], 0, 0
    for byte in data:
        acc = (acc << 8) | byte
        bits += 8
        while bits >= 5:
            bits -= 5
            out.append(CROCKFORD[(acc >> bits) & 31])
    if bits:
        out.append(CROCKFORD[(acc << (5 - bits)) & 31])
    return "".join(out)


def b32_decode(chars, line):
    out, acc, bits = bytearray(), 0, 0
    for c in chars:
        acc = ((acc << 5) | b32_char(c)) & 0xFFFF
        bits += 5
        if bits >= 8:
            bits -= 8
            out.append((acc >> bits) & 0xFF)
    if bits >= 5 or acc & ((1 << bits) - 1):
        raise KeyProblem(f"paper key line {line}: wrong number of characters")
    return bytes(out)


def normalize(s):
    return "".join(CROCKFORD[b32_char(c)] for c in s if not c.isspace() and c != "-")


def paper_check(context, prefix, data, n):
    h = blake3.blake3(derive_key_context=context)
    h.update(prefix)
    h.update(data)
    return b32_encode(h.digest()[:5])[:n]


def decode_paper(text):
    blob, expected, whole = bytearray(), 1, None
    for raw in text.splitlines():
        line = raw.strip()
        low = line.lower()
        if not line or low == "tapevault paper key v1" or low.startswith(("name:", "fingerprint:")):
            continue
        if low.startswith("key checksum:"):
            whole = normalize(line[len("key checksum:"):])
            continue
        tokens = line.split()
        if not tokens[0].isdigit() or int(tokens[0]) != expected or len(tokens) < 3:
            raise KeyProblem(f"paper key: expected key line {expected}, found {line!r}")
        chars = normalize("".join(tokens[1:-1]))
        if paper_check(PAPER_LINE_CONTEXT, struct.pack(">Q", expected), chars.encode(), 4) != normalize(tokens[-1]):
            raise KeyProblem(f"paper key line {expected} does not match its checksum")
        blob += b32_decode(chars, expected)
        expected += 1
    if whole is None or not blob:
        raise KeyProblem("paper key: no key lines or no 'key checksum:' line")
    if paper_check(PAPER_WHOLE_CONTEXT, b"", bytes(blob), 8) != whole:
        raise KeyProblem("paper key: the whole-key checksum does not match")
    return bytes(blob)


def unwrap_key(blob, passphrase, magic):
    """The wrapped-key blob of a key export (TVKEYv1) or a label's escrow (TVESCRW)."""
    if blob[:8] != magic:
        raise KeyProblem(f"not a wrapped key: magic {blob[:8]!r}, expected {magic!r}")
    fixed = 8 + 2 + 1 + 12 + 16 + 8 + 16 + 2  # magic .. name_len
    if len(blob) < fixed + 12 + 32 + 16 + 16:
        raise KeyProblem("wrapped key is truncated")
    (version,) = struct.unpack_from(">H", blob, 8)
    if version != 1:
        raise KeyProblem(f"wrapped key version {version}; this reader knows 1")
    kdf = blob[10]
    m_cost, t_cost, p_cost = struct.unpack_from(">III", blob, 11)
    salt = blob[23:39]
    (created,) = struct.unpack_from(">q", blob, 39)
    fp = blob[47:63]
    (name_len,) = struct.unpack_from(">H", blob, 63)
    if name_len > 64 or len(blob) != fixed + name_len + 12 + 32 + 16 + 16:
        raise KeyProblem(f"wrapped key length {len(blob)} does not match its name length {name_len}")
    body = blob[:-16]
    if blake3.blake3(body).digest()[:16] != blob[-16:]:
        raise KeyProblem("wrapped key checksum mismatch: the file is damaged")
    if kdf != 1:
        raise KeyProblem(f"unknown KDF {kdf}")
    if m_cost > 1 << 20 or t_cost > 64 or p_cost > 16:
        raise KeyProblem(f"KDF parameters m={m_cost} t={t_cost} p={p_cost} exceed the limits")
    header = blob[: fixed + name_len]
    name = header[fixed:].decode("utf-8")
    o = fixed + name_len
    nonce, wrapped, tag = blob[o:o + 12], blob[o + 12:o + 44], blob[o + 44:o + 60]
    kek = hash_secret_raw(passphrase, salt, time_cost=t_cost, memory_cost=m_cost,
                          parallelism=p_cost, hash_len=32, type=Argon2Type.ID, version=0x13)
    try:
        key = AESGCM(kek).decrypt(nonce, wrapped + tag, header)
    except InvalidTag:
        raise KeyProblem("wrong passphrase (the wrapped key does not authenticate)")
    if fingerprint_of(key) != fp:
        raise KeyProblem("unwrapped key does not match its fingerprint")
    return key, {"name": name, "fingerprint": fp.hex(), "created": created,
                 "kdf": {"m_cost_kib": m_cost, "t_cost": t_cost, "p_cost": p_cost}}


# ----------------------------------------------------------------- virtual cartridge (section 13)


class Cartridge:
    """A vtl-sim cartridge directory: `index` (16-byte header, 16-byte entries) + `data`."""

    def __init__(self, path):
        self.path = path
        with open(os.path.join(path, "index"), "rb") as f:
            idx = f.read()
        # Version 2 (FORMAT.md section 13) may mark blocks encrypted by the drive.
        if len(idx) < 16 or idx[:8] not in (b"VTLIDX01", b"VTLIDX02"):
            raise Integrity(f"{path}: not a virtual cartridge (index magic)")
        v2 = idx[:8] == b"VTLIDX02"
        self.data = open(os.path.join(path, "data"), "rb")
        # tape files: lists of (offset, length, drive-encrypted); split at filemarks
        self.files = [[]]
        n = (len(idx) - 16) // 16
        for i in range(n):
            e = idx[16 + 16 * i: 32 + 16 * i]
            off, lf, c = struct.unpack("<QII", e)
            if crc32(e[:12]) != c:
                raise Integrity(f"{path}: index entry {i} fails its CRC (media error)")
            if lf & 0x80000000:
                self.files.append([])
            elif v2:
                self.files[-1].append((off, lf & 0x3FFFFFFF, bool(lf & 0x40000000)))
            else:
                self.files[-1].append((off, lf, False))
        if not self.files[-1]:
            self.files.pop()  # nothing after the last filemark: end of data

    def block(self, loc):
        if loc[2]:
            raise KeyProblem(
                f"{self.path}: the block at byte {loc[0]} was encrypted by the tape drive "
                "(its key never leaves the drive): read the cartridge through the drive "
                "with the key loaded"
            )
        self.data.seek(loc[0])
        b = self.data.read(loc[1])
        if len(b) != loc[1]:
            raise Integrity(f"{self.path}: block at {loc[0]} is cut short")
        return b


# ----------------------------------------------------------------- blocks (sections 3-4)


class Body:
    def __init__(self, buf, what):
        self.buf, self.pos, self.what = buf, 0, what

    def take(self, n):
        if self.pos + n > len(self.buf):
            raise Integrity(f"{self.what}: body truncated")
        b = self.buf[self.pos:self.pos + n]
        self.pos += n
        return b

    def u8(self):
        return self.take(1)[0]

    def num(self, fmt):
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt)))[0]

    def opt16(self):
        flag, v = self.u8(), self.take(16)
        if flag == 0 and v == bytes(16):
            return None
        if flag == 1:
            return v
        raise Integrity(f"{self.what}: bad optional field")

    def string(self, maxlen):
        n = self.num("H")
        if n > maxlen:
            raise Integrity(f"{self.what}: string of {n} bytes over its limit {maxlen}")
        return self.take(n).decode("utf-8")

    def end(self):
        if self.pos != len(self.buf):
            raise Integrity(f"{self.what}: {len(self.buf) - self.pos} bytes after the body")


def cipher_field(b, what):
    enc, fp = b.u8(), b.take(16)
    if enc == 0 and fp == bytes(16):
        return None
    if enc == 1:
        return fp
    raise Integrity(f"{what}: bad encryption {enc}")


def decode_block(blk, where):
    """Check the prefix and decode the body. Returns (type, fields dict)."""
    if len(blk) < PREFIX_LEN or len(blk) > MAX_BLOCK:
        raise Integrity(f"{where}: block of {len(blk)} bytes")
    if blk[:8] != MAGIC:
        raise Integrity(f"{where}: bad magic")
    major, minor, rtype, ext_len, header_len, payload_len, hcrc = struct.unpack_from("<HHHHIII", blk, 8)
    if major not in SUPPORTED_MAJORS:
        raise Integrity(f"{where}: format version {major}.{minor}; this reader supports majors {SUPPORTED_MAJORS}")
    if header_len < PREFIX_LEN + ext_len or ext_len > MAX_EXT:
        raise Integrity(f"{where}: bad header length")
    if header_len + payload_len != len(blk):
        raise Integrity(f"{where}: lengths do not add up to the block")
    if crc32(blk[:24] + blk[28:header_len]) != hcrc:
        raise Integrity(f"{where}: header CRC mismatch")
    ext = blk[header_len - ext_len:header_len]
    entries = []
    while ext:
        if len(ext) < 4 or struct.unpack_from("<H", ext, 2)[0] > len(ext) - 4:
            raise Integrity(f"{where}: bad extension area")
        etype, elen = struct.unpack_from("<HH", ext, 0)
        entries.append((etype, ext[4:4 + elen]))
        ext = ext[4 + elen:]
    body = Body(blk[PREFIX_LEN:header_len - ext_len], where)
    header, payload = blk[:header_len], blk[header_len:]
    if rtype in (T_LABEL, T_IHDR, T_ITRL, T_SHDR, T_STRL, T_EOS) and payload_len:
        raise Integrity(f"{where}: a payload on a record type that has none")
    r = {"major": major}
    if rtype == T_LABEL:
        r.update(volume=body.take(16), media_set=body.take(16), set_sequence=body.num("I"),
                 time=body.num("q"), key_fingerprint=body.opt16(), barcode=body.string(32),
                 pool=body.string(128), writer=body.string(64), writer_version=body.string(64))
        n = body.num("I")
        if n > 16384:
            raise Integrity(f"{where}: escrow too long")
        r["escrow"] = body.take(n)
    elif rtype == T_IHDR:
        r.update(image=body.take(16), disk=body.take(16), session=body.take(16),
                 parent=body.opt16(), kind=body.u8(), part=body.num("I"),
                 first_sequence=body.num("Q"), disk_size=body.num("Q"),
                 tracking_block_size=body.num("I"), record_data_size=body.num("I"),
                 time=body.num("q"), compression=body.u8())
        r["key_fingerprint"] = cipher_field(body, where)
        r.update(vm_name=body.string(255), change_id=body.string(512))
        present = body.u8()
        if present == 0:
            if body.num("H") != 0:
                raise Integrity(f"{where}: absent from_change_id with a length")
            r["from_change_id"] = None
        elif present == 1:
            r["from_change_id"] = body.string(512)
        else:
            raise Integrity(f"{where}: bad from_change_id flag")
        if r["kind"] not in KIND_NAMES or r["compression"] not in (0, 1):
            raise Integrity(f"{where}: bad kind or compression")
        if r["kind"] == 2 and r["parent"] is None:
            raise Integrity(f"{where}: incremental without a parent")
        if r["tracking_block_size"] == 0 or not 1 <= r["record_data_size"] <= MAX_PLAIN:
            raise Integrity(f"{where}: bad block sizes")
        # 1.1: a copy names its original, a synthetic full the image it reproduces;
        # other entries are skipped.
        r["copy_of"] = None
        r["synthetic_of"] = None
        for etype, value in entries:
            if etype == EXT_COPY_OF:
                if len(value) != 16 or r["copy_of"] is not None:
                    raise Integrity(f"{where}: bad copy_of extension entry")
                r["copy_of"] = value
            elif etype == EXT_SYNTHETIC_OF:
                if len(value) != 16 or r["synthetic_of"] is not None or r["kind"] != 1:
                    raise Integrity(f"{where}: bad synthetic_of extension entry")
                r["synthetic_of"] = value
    elif rtype == T_DATA:
        r.update(image=body.take(16), part=body.num("I"), sequence=body.num("Q"),
                 compression=body.u8(), encryption=body.u8(), extent_count=body.num("H"),
                 plain_len=body.num("I"), key_fingerprint=body.take(16), nonce=body.take(12),
                 payload_crc=body.num("I"), tag=body.take(16))
        n = r["extent_count"]
        if not 1 <= n <= MAX_EXTENTS:
            raise Integrity(f"{where}: {n} extents")
        extents, prev_end, data_sum = [], None, 0
        for _ in range(n):
            off, ln, kind = body.num("Q"), body.num("Q"), body.u8()
            if ln == 0 or off + ln > 2**64 - 1 or kind not in (0, 1):
                raise Integrity(f"{where}: bad extent")
            if prev_end is not None and off < prev_end:
                raise Integrity(f"{where}: extents overlap or descend")
            prev_end = off + ln
            if kind == 0:
                data_sum += ln
            extents.append((off, ln, kind))
        r["extents"] = extents
        check_record_fields(r, data_sum, len(payload), where)
        r["aad"] = header[:24] + bytes(4) + header[28:92] + bytes(20) + header[112:]
    elif rtype == T_ITRL:
        r.update(image=body.take(16), part=body.num("I"), status=body.u8(),
                 records_in_part=body.num("Q"), records_in_image=body.num("Q"),
                 data_bytes=body.num("Q"), zero_bytes=body.num("Q"),
                 stored_bytes=body.num("Q"), digest=body.take(32))
        if r["status"] not in STATUS_NAMES or r["records_in_part"] > r["records_in_image"]:
            raise Integrity(f"{where}: bad trailer")
    elif rtype == T_SHDR:
        r.update(session=body.take(16), media_set=body.take(16), time=body.num("q"),
                 compression=body.u8())
        r["key_fingerprint"] = cipher_field(body, where)
        r.update(total_plain_len=body.num("Q"), chunk_data_size=body.num("I"))
    elif rtype == T_CHUNK:
        r.update(session=body.take(16), sequence=body.num("Q"), compression=body.u8(),
                 encryption=body.u8(), reserved=body.num("H"), plain_len=body.num("I"),
                 key_fingerprint=body.take(16), nonce=body.take(12),
                 payload_crc=body.num("I"), tag=body.take(16))
        if r["reserved"] != 0 or not 1 <= r["plain_len"] <= MAX_PLAIN:
            raise Integrity(f"{where}: bad chunk fields")
        check_record_fields(r, r["plain_len"], len(payload), where)
        r["aad"] = header[:24] + bytes(4) + header[28:88] + bytes(20) + header[108:]
    elif rtype == T_STRL:
        r.update(session=body.take(16), chunk_count=body.num("Q"),
                 total_plain_len=body.num("Q"), digest=body.take(32))
    elif rtype == T_EOS:
        r.update(session=body.take(16), media_set=body.take(16), time=body.num("q"),
                 image_parts=body.num("I"), set_sequence=body.num("I"))
    elif minor > SUPPORTED_MINOR:
        return rtype, {"unknown": True}  # a newer minor's record type: skip it
    else:
        raise Integrity(f"{where}: unknown record type {rtype:#06x} in version {major}.{minor}")
    body.end()
    if rtype in (T_DATA, T_CHUNK):
        if crc32(payload) != r["payload_crc"]:
            raise Integrity(f"{where}: payload CRC mismatch")
        r["payload"] = payload
    return rtype, r


def check_record_fields(r, data_sum, stored_len, where):
    if r["compression"] not in (0, 1) or r["encryption"] not in (0, 1):
        raise Integrity(f"{where}: bad compression or encryption value")
    if r["plain_len"] > MAX_PLAIN or data_sum != r["plain_len"]:
        raise Integrity(f"{where}: plain_len is not the sum of the data extents")
    if r["compression"] == 0 and stored_len != r["plain_len"]:
        raise Integrity(f"{where}: uncompressed payload of {stored_len} bytes, plain_len {r['plain_len']}")
    if r["encryption"] == 0 and (r["key_fingerprint"] != bytes(16) or r["nonce"] != bytes(12) or r["tag"] != bytes(16)):
        raise Integrity(f"{where}: clear record with key fields set")


def open_payload(r, want_fp, key, where):
    """Authenticate (AES-256-GCM), decrypt and decompress a data record or chunk."""
    enc_fp = r["key_fingerprint"] if r["encryption"] == 1 else None
    if enc_fp != want_fp:
        raise Integrity(f"{where}: record encryption/key differs from its header's")
    stored = r["payload"]
    if enc_fp is not None:
        if key is None or fingerprint_of(key) != enc_fp:
            raise KeyProblem(f"{where}: needs key {enc_fp.hex()}")
        try:
            stored = AESGCM(key).decrypt(r["nonce"], stored + r["tag"], r["aad"])
        except InvalidTag:
            raise Integrity(f"{where}: authentication failed (AES-GCM tag)")
    if r["compression"] == 0:
        plain = stored
    else:
        try:
            plain = zstandard.ZstdDecompressor().decompress(stored, max_output_size=r["plain_len"])
        except zstandard.ZstdError as e:
            raise Integrity(f"{where}: zstd: {e}")
    if len(plain) != r["plain_len"]:
        raise Integrity(f"{where}: decoded to {len(plain)} bytes, plain_len {r['plain_len']}")
    return plain


# ----------------------------------------------------------------- reading the tapes


class Tapes:
    def __init__(self, dirs):
        self.carts = [Cartridge(d) for d in dirs]
        self.labels = []
        self.parts = {}  # image uuid -> {part: (cartridge, tape file, header)}
        self.snapshots = []  # ((time, set_sequence, tape file), cartridge, tape file, header)
        self.eos = []  # (cartridge, tape file, end-of-session)
        self.stats = dict(parts=0, records=0, raw_records=0, zstd_records=0, encrypted_records=0,
                          zero_only_records=0, zero_extents=0)
        for c in self.carts:
            self.scan(c)
        # An end-of-session counts the image parts its session wrote on all cartridges.
        for c, f, r in self.eos:
            have = sum(1 for parts in self.parts.values() for (_, _, h) in parts.values()
                       if h["session"] == r["session"])
            if have > r["image_parts"]:
                raise Integrity(f"{c.path} file {f}: end of session counts {r['image_parts']} image parts, "
                                f"the cartridges hold {have}")
            if have < r["image_parts"]:
                print(f"note: session {u(r['session'])} wrote {r['image_parts']} image parts, "
                      f"{have} are on the cartridges given", file=sys.stderr)

    def first_block(self, c, f):
        return decode_block(c.block(c.files[f][0]), f"{c.path} file {f} block 0")

    def scan(self, c):
        if not c.files or not c.files[0]:
            raise Integrity(f"{c.path}: blank cartridge")
        t, label = self.first_block(c, 0)
        if t != T_LABEL or len(c.files[0]) != 1:
            raise Integrity(f"{c.path}: tape file 0 is not a single volume label")
        self.labels.append((c, label))
        for f in range(1, len(c.files)):
            if not c.files[f]:
                raise Integrity(f"{c.path}: empty tape file {f}")
            t, r = self.first_block(c, f)
            if t == T_IHDR:
                self.parts.setdefault(r["image"], {})
                if r["part"] in self.parts[r["image"]]:
                    raise Integrity(f"image {u(r['image'])} part {r['part']} found twice")
                self.parts[r["image"]][r["part"]] = (c, f, r)
            elif t == T_SHDR:
                self.snapshots.append(((r["time"], label["set_sequence"], f), c, f, r))
            elif t == T_EOS:
                if r["media_set"] != label["media_set"] or r["set_sequence"] != label["set_sequence"]:
                    raise Integrity(f"{c.path} file {f}: end-of-session of another cartridge")
                self.eos.append((c, f, r))
            else:
                raise Integrity(f"{c.path} file {f}: starts with record type {t:#06x}")

    def images(self):
        """Every image with a part 0: its header (of part 0)."""
        return {img: parts[0][2] for img, parts in self.parts.items() if 0 in parts}

    def read_image(self, image, key, on_record):
        """Read and check every part of `image`; call on_record(extents, plain) per record."""
        parts = self.parts.get(image, {})
        if 0 not in parts:
            raise Integrity(f"image {u(image)}: part 0 is not on the cartridges given")
        first = parts[0][2]
        want_fp = first["key_fingerprint"]
        if want_fp is not None and key is not None and fingerprint_of(key) != want_fp:
            raise KeyProblem(f"image {u(image)} needs key {want_fp.hex()}, the export holds {fingerprint_of(key).hex()}")
        digest = blake3.blake3(key=derive_key(DIGEST_KEY_CONTEXT, key)) if want_fp else blake3.blake3()
        next_seq, part = 0, 0
        while True:
            if part not in parts:
                raise Integrity(f"image {u(image)}: part {part} is missing")
            c, f, h = parts[part]
            same = {k: v for k, v in h.items() if k not in ("part", "first_sequence")}
            if same != {k: v for k, v in first.items() if k not in ("part", "first_sequence")}:
                raise Integrity(f"image {u(image)} part {part}: header differs from part 0's")
            if h["first_sequence"] != next_seq:
                raise Integrity(f"image {u(image)} part {part}: first_sequence {h['first_sequence']}, expected {next_seq}")
            counts = dict(records=0, data=0, zero=0, stored=0)
            blocks = c.files[f]
            trailer = None
            for i, loc in enumerate(blocks[1:], start=1):
                where = f"{c.path} file {f} block {i}"
                if trailer is not None:
                    raise Integrity(f"{where}: block after the image trailer")
                t, r = decode_block(c.block(loc), where)
                if t == T_DATA:
                    if r["image"] != image or r["part"] != part:
                        raise Integrity(f"{where}: record of another image or part")
                    if r["sequence"] != next_seq:
                        raise Integrity(f"{where}: sequence {r['sequence']}, expected {next_seq} (lost, duplicate or reordered)")
                    plain = open_payload(r, want_fp, key, where)
                    pos = 0
                    for (off, ln, kind) in r["extents"]:
                        digest.update(struct.pack("<QQB", off, ln, kind))
                        if kind == 0 and first["major"] == 1:
                            digest.update(plain[pos:pos + ln])
                        elif kind == 0:
                            # Major 2: the BLAKE3 of each piece, cut at every 64 KiB of disk offset.
                            at = off
                            while at < off + ln:
                                end = min((at // DIGEST_PIECE + 1) * DIGEST_PIECE, off + ln)
                                digest.update(blake3.blake3(plain[pos + at - off:pos + end - off]).digest())
                                at = end
                        if kind == 0:
                            pos += ln
                            counts["data"] += ln
                        else:
                            counts["zero"] += ln
                    on_record(r["extents"], plain)
                    st = self.stats
                    st["records"] += 1
                    st["zstd_records" if r["compression"] == 1 else "raw_records"] += 1
                    st["encrypted_records"] += r["encryption"]
                    st["zero_only_records"] += r["plain_len"] == 0
                    st["zero_extents"] += sum(1 for e in r["extents"] if e[2] == 1)
                    counts["records"] += 1
                    counts["stored"] += len(r["payload"])
                    next_seq += 1
                elif t == T_ITRL:
                    trailer = r
                else:
                    raise Integrity(f"{where}: unexpected record type {t:#06x} in an image part")
            if trailer is None:
                raise Integrity(f"image {u(image)} part {part}: truncated (no trailer)")
            if trailer["image"] != image or trailer["part"] != part:
                raise Integrity(f"image {u(image)} part {part}: trailer of another image or part")
            if trailer["major"] != h["major"]:
                raise Integrity(f"image {u(image)} part {part}: trailer major {trailer['major']}, header major {h['major']}")
            for field, have in (("records_in_part", counts["records"]), ("records_in_image", next_seq),
                                ("data_bytes", counts["data"]), ("zero_bytes", counts["zero"]),
                                ("stored_bytes", counts["stored"])):
                if trailer[field] != have:
                    raise Integrity(f"image {u(image)} part {part}: trailer {field} {trailer[field]}, counted {have}")
            if digest.digest() != trailer["digest"]:
                raise Integrity(f"image {u(image)} part {part}: content digest differs from the trailer's")
            self.stats["parts"] += 1
            if trailer["status"] == 1:
                return first
            if trailer["status"] == 3:
                raise Integrity(f"image {u(image)}: the writer aborted it")
            part += 1

    def read_snapshot(self, c, f, key):
        blocks = c.files[f]
        _, h = decode_block(c.block(blocks[0]), f"{c.path} file {f} block 0")
        out, seq, trailer = bytearray(), 0, None
        for i, loc in enumerate(blocks[1:], start=1):
            where = f"{c.path} file {f} block {i}"
            if trailer is not None:
                raise Integrity(f"{where}: block after the snapshot trailer")
            t, r = decode_block(c.block(loc), where)
            if t == T_CHUNK:
                if r["session"] != h["session"] or r["sequence"] != seq:
                    raise Integrity(f"{where}: chunk of another snapshot or out of sequence")
                out += open_payload(r, h["key_fingerprint"], key, where)
                seq += 1
            elif t == T_STRL:
                trailer = r
            else:
                raise Integrity(f"{where}: unexpected record type {t:#06x} in a snapshot")
        if trailer is None or trailer["session"] != h["session"]:
            raise Integrity(f"{c.path} file {f}: snapshot without its trailer")
        if trailer["chunk_count"] != seq or trailer["total_plain_len"] != len(out) or h["total_plain_len"] != len(out):
            raise Integrity(f"{c.path} file {f}: snapshot counts differ from its trailer")
        if h["key_fingerprint"] is not None:
            d = blake3.blake3(bytes(out), key=derive_key(DIGEST_KEY_CONTEXT, key)).digest()
        else:
            d = blake3.blake3(bytes(out)).digest()
        if d != trailer["digest"]:
            raise Integrity(f"{c.path} file {f}: snapshot digest differs from its trailer's")
        return bytes(out)


    def snapshot_chain(self, snap, c, f, key):
        """The snapshot documents `snap` (in file f of c) needs, oldest first, ending
        with it: a full snapshot alone, or a delta's base (FORMAT.md 4.5), the base's
        base, ... down to a full snapshot, then it."""
        def doc_of(b, where):
            try:
                d = json.loads(b)
            except ValueError as e:
                raise Integrity(f"{where}: the snapshot is not JSON: {e}")
            if d.get("format") != "tapevault-catalog":
                raise Integrity(f"{where}: the snapshot is not a tapevault catalog document")
            if d.get("version") not in (1, 2):
                raise Integrity(f"{where}: catalog document version {d.get('version')} is not known")
            if d.get("kind") is None:
                if d.get("base"):
                    raise Integrity(f"{where}: a full snapshot with a base")
                return None
            if d["version"] != 2 or d["kind"] != "delta" or len(d.get("base") or []) != 1:
                raise Integrity(f"{where}: a snapshot of kind {d['kind']!r} without its one base")
            return d["base"][0]
        barcode = next(l["barcode"] for (cc, l) in self.labels if cc is c)
        out = [snap]
        base = doc_of(snap, f"{c.path} file {f}")
        while base is not None:
            if base["barcode"] != barcode or not 0 < base["tape_file"] < f:
                raise Integrity(f"{c.path} file {f}: its base snapshot is not before it on the cartridge")
            f = base["tape_file"]
            where = f"{c.path} file {f}"
            t, h = self.first_block(c, f)
            if t != T_SHDR or u(h["session"]) != base["session_uuid"]:
                raise Integrity(f"{where}: not the snapshot of session {base['session_uuid']} the delta names")
            b = self.read_snapshot(c, f, key)
            out.append(b)
            base = doc_of(b, where)
        return out[::-1]


def restore(tapes, target, key, out_path):
    """Rebuild the disk as of `target`: full first, incrementals over it, newest wins."""
    images = tapes.images()
    if target not in images:
        raise Integrity(f"image {u(target)} is not on the cartridges given")
    chain = [images[target]]
    while chain[-1]["kind"] == 2:
        parent = chain[-1]["parent"]
        if parent not in images:
            raise Integrity(f"parent {u(parent)} of {u(chain[-1]['image'])} is not on the cartridges given")
        p = images[parent]
        if p["kind"] == 3 or p["disk"] != chain[-1]["disk"] or len(chain) > 10000:
            raise Integrity(f"parent {u(parent)} cannot be a base (a copy, another disk, or a loop)")
        chain.append(p)
    chain.reverse()
    size = chain[-1]["disk_size"]
    covered = []
    with open(out_path, "wb") as out:
        out.truncate(size)

        def write(extents, plain):
            pos = 0
            for (off, ln, kind) in extents:
                piece = plain[pos:pos + ln] if kind == 0 else None
                if kind == 0:
                    pos += ln
                end = min(off + ln, size)
                if off >= end:
                    continue  # beyond the target's size: clipped
                covered.append((off, end))
                out.seek(off)
                if kind == 0:
                    out.write(piece[: end - off])
                else:
                    n = end - off
                    while n:
                        k = min(n, 1 << 20)
                        out.write(bytes(k))
                        n -= k

        for h in chain:
            tapes.read_image(h["image"], key, write)
            print(f"applied {KIND_NAMES[h['kind']]} {u(h['image'])} ({h['disk_size']} bytes)", file=sys.stderr)
    covered.sort()
    reach = 0
    for s, e in covered:
        if s > reach:
            break
        reach = max(reach, e)
    if reach < size:
        raise Integrity(f"no image of the chain covers bytes {reach}.. of the {size}-byte disk")
    return chain


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cartridges", nargs="+", help="virtual cartridge directories")
    ap.add_argument("--key", help="key export file (binary or paper form)")
    ap.add_argument("--escrow", action="store_true", help="take the key from a volume label's escrow blob")
    ap.add_argument("--passphrase-file", help="file holding the key's passphrase (one line)")
    ap.add_argument("--list", action="store_true", help="print the images on the cartridges as JSON")
    ap.add_argument("--image", help="image UUID to restore (a point in time)")
    ap.add_argument("--out", help="where to write the restored raw disk")
    ap.add_argument("--snapshot-out", help="write the newest catalog snapshot (checked) here")
    a = ap.parse_args()
    if a.image and not a.out:
        ap.error("--image needs --out")
    try:
        passphrase = None
        if a.passphrase_file:
            with open(a.passphrase_file, "rb") as f:
                passphrase = f.read().rstrip(b"\r\n")
        tapes = Tapes(a.cartridges)
        key = None
        if a.key or a.escrow:
            if passphrase is None:
                ap.error("a key needs --passphrase-file")
            if a.key:
                with open(a.key, "rb") as f:
                    blob = f.read()
                if not blob.startswith(KEYFILE_MAGIC):
                    blob = decode_paper(blob.decode("utf-8"))
                key, info = unwrap_key(blob, passphrase, KEYFILE_MAGIC)
            else:
                blobs = [l["escrow"] for _, l in tapes.labels if l["escrow"]]
                if not blobs:
                    raise KeyProblem("no volume label carries an escrow blob")
                key, info = unwrap_key(blobs[0], passphrase, ESCROW_MAGIC)
            print(f"key {info['name'] or '(escrow)'} fingerprint {info['fingerprint']}", file=sys.stderr)
        if a.list:
            rows = []
            for img, h in sorted(tapes.images().items(), key=lambda kv: kv[1]["time"]):
                rows.append({"image": u(img), "disk": u(h["disk"]), "kind": KIND_NAMES[h["kind"]],
                             "parent": u(h["parent"]) if h["parent"] else None, "time": h["time"],
                             "disk_size": h["disk_size"], "parts": sorted(tapes.parts[img]),
                             "key_fingerprint": h["key_fingerprint"].hex() if h["key_fingerprint"] else None,
                             "synthetic_of": u(h["synthetic_of"]) if h["synthetic_of"] else None})
            print(json.dumps(rows, indent=1))
        if a.image:
            chain = restore(tapes, uuidlib.UUID(a.image).bytes, key, a.out)
            print(json.dumps({"restored": a.image, "disk_size": chain[-1]["disk_size"],
                              "chain": [u(h["image"]) for h in chain], "read": tapes.stats}))
        if a.snapshot_out:
            if not tapes.snapshots:
                raise Integrity("no catalog snapshot on the cartridges given")
            _, c, f, _ = max(tapes.snapshots, key=lambda s: s[0])
            snap = tapes.read_snapshot(c, f, key)
            docs = tapes.snapshot_chain(snap, c, f, key)
            with open(a.snapshot_out, "wb") as f:
                f.write(b"\n".join(docs) + b"\n")
    except KeyProblem as e:
        print(f"spec-reader: key: {e}", file=sys.stderr)
        return 5
    except Integrity as e:
        print(f"spec-reader: integrity: {e}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
