"""Generate the Markdown API reference docs/api.md from the comments in protos/flightlog/v1.

    python protos/gen_docs.py           # (re)write docs/api.md
    python protos/gen_docs.py --check   # exit 1, with a diff, when docs/api.md is out of date

The protos are compiled with the project's pinned grpcio-tools (``python -m grpc_tools.protoc``
with ``--include_source_info``) into a FileDescriptorSet, and the comments are read from its
source-code info, so what is documented is exactly what protoc sees. For each file the page lists
its services (each RPC with its request and response types, a streaming marker and its full
comment), its messages (a table of fields: name, type, label and comment) and its enums (values,
numbers and comments). Comments are Markdown already (backticks, paragraphs) and are kept as
written. A file's overview is the detached comment before its first definition (as in
common.proto); other detached comments are not rendered.

The output depends only on the .proto files: files are sorted, elements keep their declaration
order and nothing time- or machine-dependent is written.
"""

from __future__ import annotations

import argparse
import difflib
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PROTO_GLOB = "flightlog/v1/*.proto"
DEFAULT_OUTPUT = ROOT / "docs" / "api.md"

# Field numbers in descriptor.proto, which make up source-code-info paths.
FILE_PACKAGE = 2
FILE_DEPENDENCY = 3
FILE_MESSAGE_TYPE = 4
FILE_ENUM_TYPE = 5
FILE_SERVICE = 6
FILE_SYNTAX = 12
MESSAGE_FIELD = 2
MESSAGE_NESTED_TYPE = 3
MESSAGE_ENUM_TYPE = 4
MESSAGE_ONEOF_DECL = 8
ENUM_VALUE = 2
SERVICE_METHOD = 2

FDP = descriptor_pb2.FieldDescriptorProto
SCALAR_TYPE_NAMES: dict[int, str] = {
    FDP.TYPE_DOUBLE: "double",
    FDP.TYPE_FLOAT: "float",
    FDP.TYPE_INT64: "int64",
    FDP.TYPE_UINT64: "uint64",
    FDP.TYPE_INT32: "int32",
    FDP.TYPE_FIXED64: "fixed64",
    FDP.TYPE_FIXED32: "fixed32",
    FDP.TYPE_BOOL: "bool",
    FDP.TYPE_STRING: "string",
    FDP.TYPE_BYTES: "bytes",
    FDP.TYPE_UINT32: "uint32",
    FDP.TYPE_SFIXED32: "sfixed32",
    FDP.TYPE_SFIXED64: "sfixed64",
    FDP.TYPE_SINT32: "sint32",
    FDP.TYPE_SINT64: "sint64",
}

# A location in a file descriptor, as in SourceCodeInfo.Location.path.
SourcePath = tuple[int, ...]


class GenDocsError(Exception):
    """A failure to compile the protos or to write the output."""


def compile_descriptors(proto_root: Path, files: Sequence[str]) -> descriptor_pb2.FileDescriptorSet:
    """Compile `files` (relative to `proto_root`) into a FileDescriptorSet with source info."""
    with tempfile.TemporaryDirectory(prefix="flightlog-docs-") as tmp:
        out = Path(tmp) / "descriptors.binpb"
        # `python -m grpc_tools.protoc` adds grpc_tools' bundled google/protobuf include path.
        command = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"--proto_path={proto_root}",
            "--include_source_info",
            f"--descriptor_set_out={out}",
            *files,
        ]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise GenDocsError(
                f"protoc failed (exit {result.returncode}):\n{result.stderr or result.stdout}"
            )
        return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


# ---------------------------------------------------------------------------------------------
# Comments


def clean_comment(raw: str) -> str:
    """Strip protoc's comment form: the space after `//` on each line and surrounding blanks."""
    lines = [line[1:] if line.startswith(" ") else line for line in raw.split("\n")]
    return "\n".join(line.rstrip() for line in lines).strip("\n")


_ENTITY = re.compile(r"&(?=#?[0-9A-Za-z]+;)")
_QUOTE_AT_LINE_START = re.compile(r"^(\s*)>", re.MULTILINE)


def escape_html(text: str) -> str:
    """Escape what Markdown would misread outside code spans.

    `<` could open an HTML tag, `&` an entity, and `>` at the start of a line a block quote;
    every other character of a comment is kept, since the comments are written as Markdown.
    """
    parts = text.split("`")
    for i in range(0, len(parts), 2):
        part = _ENTITY.sub("&amp;", parts[i]).replace("<", "&lt;")
        parts[i] = _QUOTE_AT_LINE_START.sub(r"\1&gt;", part)
    return "`".join(parts)


def as_cell(text: str) -> str:
    """Render a comment inside a table cell: paragraphs joined by <br><br>, pipes escaped."""
    paragraphs = [" ".join(p.split("\n")) for p in text.split("\n\n") if p.strip()]
    return "<br><br>".join(escape_html(p).replace("|", "\\|") for p in paragraphs)


@dataclass(frozen=True)
class Comments:
    """The comments of one file, by source-code-info path."""

    by_path: dict[SourcePath, descriptor_pb2.SourceCodeInfo.Location]

    @classmethod
    def of(cls, file: descriptor_pb2.FileDescriptorProto) -> Comments:
        by_path: dict[SourcePath, descriptor_pb2.SourceCodeInfo.Location] = {}
        for location in file.source_code_info.location:
            by_path.setdefault(tuple(location.path), location)
        return cls(by_path)

    def get(self, path: SourcePath) -> str:
        """The leading and trailing comments of the element at `path`, cleaned."""
        location = self.by_path.get(path)
        if location is None:
            return ""
        parts = [
            clean_comment(location.leading_comments),
            clean_comment(location.trailing_comments),
        ]
        return "\n\n".join(p for p in parts if p)

    def overview(self) -> str:
        """The detached comments before the file's first definition: its overview."""
        top_level = [
            location
            for path, location in self.by_path.items()
            if len(path) == 2 and path[0] in (FILE_MESSAGE_TYPE, FILE_ENUM_TYPE, FILE_SERVICE)
        ]
        if not top_level:
            return ""
        first_line = min(location.span[0] for location in top_level)
        header = [
            location
            for path, location in self.by_path.items()
            if (path and path[0] in (FILE_SYNTAX, FILE_PACKAGE, FILE_DEPENDENCY))
            or (location in top_level and location.span[0] == first_line)
        ]
        header.sort(key=lambda location: (location.span[0], location.span[1]))
        detached = [clean_comment(c) for loc in header for c in loc.leading_detached_comments]
        return "\n\n".join(c for c in detached if c)


# ---------------------------------------------------------------------------------------------
# Rendering


def anchor(full_name: str) -> str:
    """The anchor of a documented type, as protoc-gen-doc names them."""
    return full_name


@dataclass(frozen=True)
class TypeIndex:
    """Every message and enum of the documented files, to link types and spot map entries."""

    documented: dict[str, str]  # full name -> name without the package
    map_entries: dict[str, descriptor_pb2.DescriptorProto]

    @classmethod
    def of(cls, files: Sequence[descriptor_pb2.FileDescriptorProto]) -> TypeIndex:
        documented: dict[str, str] = {}
        map_entries: dict[str, descriptor_pb2.DescriptorProto] = {}
        for file in files:
            for message, full_name, _ in walk_messages(file):
                if message.options.map_entry:
                    map_entries[full_name] = message
                else:
                    documented[full_name] = short_name(full_name, file.package)
            for _, full_name, _ in walk_enums(file):
                documented[full_name] = short_name(full_name, file.package)
        return cls(documented, map_entries)

    def link(self, type_name: str) -> str:
        """Markdown for a `.package.Type` reference: a link when documented here."""
        full_name = type_name.lstrip(".")
        if full_name in self.documented:
            return f"[`{self.documented[full_name]}`](#{anchor(full_name)})"
        return f"`{full_name}`"

    def field_type(self, field: descriptor_pb2.FieldDescriptorProto) -> str:
        """Markdown for a field's type; map fields read `map<K, V>`."""
        if field.type in (FDP.TYPE_MESSAGE, FDP.TYPE_ENUM):
            entry = self.map_entries.get(field.type_name.lstrip("."))
            if entry is not None:
                key, value = entry.field[0], entry.field[1]
                return f"map&lt;{self.field_type(key)}, {self.field_type(value)}>"
            return self.link(field.type_name)
        return f"`{SCALAR_TYPE_NAMES[field.type]}`"


def walk_messages(
    file: descriptor_pb2.FileDescriptorProto,
) -> Iterator[tuple[descriptor_pb2.DescriptorProto, str, SourcePath]]:
    """Every message of a file, nested ones after their parent, with full name and path."""

    def walk(
        message: descriptor_pb2.DescriptorProto, prefix: str, path: SourcePath
    ) -> Iterator[tuple[descriptor_pb2.DescriptorProto, str, SourcePath]]:
        full_name = f"{prefix}.{message.name}"
        yield message, full_name, path
        for i, nested in enumerate(message.nested_type):
            yield from walk(nested, full_name, (*path, MESSAGE_NESTED_TYPE, i))

    for i, message in enumerate(file.message_type):
        yield from walk(message, file.package, (FILE_MESSAGE_TYPE, i))


def walk_enums(
    file: descriptor_pb2.FileDescriptorProto,
) -> Iterator[tuple[descriptor_pb2.EnumDescriptorProto, str, SourcePath]]:
    """Every enum of a file, top-level ones first, then those nested in messages."""
    for i, enum in enumerate(file.enum_type):
        yield enum, f"{file.package}.{enum.name}", (FILE_ENUM_TYPE, i)
    for message, full_name, path in walk_messages(file):
        for i, enum in enumerate(message.enum_type):
            yield enum, f"{full_name}.{enum.name}", (*path, MESSAGE_ENUM_TYPE, i)


def short_name(full_name: str, package: str) -> str:
    """`flightlog.v1.Outer.Inner` without its package: `Outer.Inner`."""
    return full_name.removeprefix(f"{package}.")


def field_label(
    message: descriptor_pb2.DescriptorProto,
    field: descriptor_pb2.FieldDescriptorProto,
    index: TypeIndex,
) -> str:
    """The label column: repeated, map, optional, or the oneof a field belongs to."""
    if field.label == FDP.LABEL_REPEATED:
        is_map = field.type_name.lstrip(".") in index.map_entries
        return "map" if is_map else "repeated"
    if field.proto3_optional:
        return "optional"
    if field.HasField("oneof_index"):
        return f"oneof `{message.oneof_decl[field.oneof_index].name}`"
    return ""


def render_service(
    lines: list[str],
    file: descriptor_pb2.FileDescriptorProto,
    comments: Comments,
    index: TypeIndex,
    service_index: int,
) -> None:
    service = file.service[service_index]
    path: SourcePath = (FILE_SERVICE, service_index)
    full_name = f"{file.package}.{service.name}"
    lines += [f'<a name="{anchor(full_name)}"></a>', "", f"#### {service.name}", ""]
    if text := comments.get(path):
        lines += [escape_html(text), ""]
    lines += ["| Method | Request | Response |", "| --- | --- | --- |"]
    for method in service.method:
        request = ("stream " if method.client_streaming else "") + index.link(method.input_type)
        response = ("stream " if method.server_streaming else "") + index.link(method.output_type)
        method_anchor = anchor(f"{full_name}.{method.name}")
        lines.append(f"| [{method.name}](#{method_anchor}) | {request} | {response} |")
    lines.append("")
    for i, method in enumerate(service.method):
        method_full_name = f"{full_name}.{method.name}"
        streaming = [
            kind
            for kind, flag in (
                ("client streaming", method.client_streaming),
                ("server streaming", method.server_streaming),
            )
            if flag
        ]
        marker = f" ({', '.join(streaming)})" if streaming else ""
        request = ("stream " if method.client_streaming else "") + index.link(method.input_type)
        response = ("stream " if method.server_streaming else "") + index.link(method.output_type)
        lines += [
            f'<a name="{anchor(method_full_name)}"></a>',
            "",
            f"##### {service.name}.{method.name}{marker}",
            "",
            f"{request} → {response}",
            "",
        ]
        if text := comments.get((*path, SERVICE_METHOD, i)):
            lines += [escape_html(text), ""]


def render_message(
    lines: list[str],
    file: descriptor_pb2.FileDescriptorProto,
    comments: Comments,
    index: TypeIndex,
    message: descriptor_pb2.DescriptorProto,
    full_name: str,
    path: SourcePath,
) -> None:
    lines += [
        f'<a name="{anchor(full_name)}"></a>',
        "",
        f"#### {short_name(full_name, file.package)}",
        "",
    ]
    if text := comments.get(path):
        lines += [escape_html(text), ""]
    if not message.field:
        lines += ["No fields.", ""]
        return
    lines += ["| Field | Type | Label | Description |", "| --- | --- | --- | --- |"]
    for i, field in enumerate(message.field):
        description = as_cell(comments.get((*path, MESSAGE_FIELD, i)))
        label = field_label(message, field, index)
        lines.append(f"| `{field.name}` | {index.field_type(field)} | {label} | {description} |")
    lines.append("")
    real_oneofs = [
        (i, oneof)
        for i, oneof in enumerate(message.oneof_decl)
        if not any(f.proto3_optional and f.oneof_index == i for f in message.field)
    ]
    for i, oneof in real_oneofs:
        members = ", ".join(
            f"`{f.name}`" for f in message.field if f.HasField("oneof_index") and f.oneof_index == i
        )
        text = comments.get((*path, MESSAGE_ONEOF_DECL, i))
        summary = f"Oneof `{oneof.name}` (at most one of {members})"
        lines += [f"{summary}: {as_cell(text)}" if text else f"{summary}.", ""]


def render_enum(
    lines: list[str],
    file: descriptor_pb2.FileDescriptorProto,
    comments: Comments,
    enum: descriptor_pb2.EnumDescriptorProto,
    full_name: str,
    path: SourcePath,
) -> None:
    lines += [
        f'<a name="{anchor(full_name)}"></a>',
        "",
        f"#### {short_name(full_name, file.package)}",
        "",
    ]
    if text := comments.get(path):
        lines += [escape_html(text), ""]
    lines += ["| Name | Number | Description |", "| --- | --- | --- |"]
    for i, value in enumerate(enum.value):
        description = as_cell(comments.get((*path, ENUM_VALUE, i)))
        lines.append(f"| `{value.name}` | {value.number} | {description} |")
    lines.append("")


def render(fds: descriptor_pb2.FileDescriptorSet, documented: Sequence[str]) -> str:
    """The whole Markdown page for the files named in `documented`, in that order."""
    by_name = {file.name: file for file in fds.file}
    files = [by_name[name] for name in documented]
    index = TypeIndex.of(files)
    lines = [
        "# Flightlog API reference",
        "",
        "<!-- Generated by protos/gen_docs.py from protos/flightlog/v1; do not edit by hand. -->",
        "",
        "Generated from the comments in `protos/flightlog/v1/*.proto` by `protos/gen_docs.py`. "
        "Run `python protos/gen_docs.py` after changing a `.proto` file; `make lint` fails while "
        "this page is out of date.",
        "",
        "## Contents",
        "",
    ]
    for file in files:
        lines.append(f"- [{file.name}](#{anchor(file.name)})")
        for service in file.service:
            lines.append(
                f"  - service [{service.name}](#{anchor(f'{file.package}.{service.name}')})"
            )
        names = [n for m, n, _ in walk_messages(file) if not m.options.map_entry]
        if names:
            links = ", ".join(f"[{short_name(n, file.package)}](#{anchor(n)})" for n in names)
            lines.append(f"  - messages: {links}")
        names = [n for _, n, _ in walk_enums(file)]
        if names:
            links = ", ".join(f"[{short_name(n, file.package)}](#{anchor(n)})" for n in names)
            lines.append(f"  - enums: {links}")
    lines.append("")

    for file in files:
        comments = Comments.of(file)
        lines += [
            f'<a name="{anchor(file.name)}"></a>',
            "",
            f"## {file.name}",
            "",
            f"Package `{file.package}`.",
            "",
        ]
        if overview := comments.overview():
            lines += [escape_html(overview), ""]
        if file.service:
            lines += ["### Services", ""]
            for i in range(len(file.service)):
                render_service(lines, file, comments, index, i)
        messages = [m for m in walk_messages(file) if not m[0].options.map_entry]
        if messages:
            lines += ["### Messages", ""]
            for message, full_name, path in messages:
                render_message(lines, file, comments, index, message, full_name, path)
        enums = list(walk_enums(file))
        if enums:
            lines += ["### Enums", ""]
            for enum, full_name, path in enums:
                render_enum(lines, file, comments, enum, full_name, path)

    while lines and lines[-1] == "":
        lines.pop()
    return "\n".join(lines) + "\n"


def generate(proto_root: Path = PROTO_ROOT) -> str:
    """Compile the protos under `proto_root` and render the reference page."""
    documented = sorted(p.relative_to(proto_root).as_posix() for p in proto_root.glob(PROTO_GLOB))
    if not documented:
        raise GenDocsError(f"no .proto files match {proto_root / PROTO_GLOB}")
    return render(compile_descriptors(proto_root, documented), documented)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--check",
        action="store_true",
        help="do not write; exit 1 with a diff when the output file is out of date",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        help=f"the Markdown file (default: {DEFAULT_OUTPUT.relative_to(ROOT)})",
    )
    args = parser.parse_args(argv)
    output: Path = args.output
    shown = output.relative_to(ROOT) if output.is_relative_to(ROOT) else output

    try:
        text = generate()
    except GenDocsError as error:
        print(f"gen_docs: {error}", file=sys.stderr)
        return 2

    if args.check:
        current = output.read_text(encoding="utf-8") if output.exists() else ""
        if current == text:
            print(f"gen_docs: {shown} is up to date.")
            return 0
        diff = difflib.unified_diff(
            current.splitlines(keepends=True),
            text.splitlines(keepends=True),
            fromfile=f"{shown} (committed)",
            tofile=f"{shown} (generated)",
        )
        sys.stderr.writelines(diff)
        print(
            f"gen_docs: {shown} is out of date with protos/; run 'python protos/gen_docs.py'.",
            file=sys.stderr,
        )
        return 1

    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text, encoding="utf-8")
    print(f"gen_docs: wrote {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
