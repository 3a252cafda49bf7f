"""Every protoc generator accepts protos/ as shipped, and each language gets the names it should.

Each language's generator (and, where Debian packages one, its gRPC plugin) runs over every file
of protos/flightlog/v1 into a temporary directory; the test asserts that it succeeds and that a
generated file declares what the protos' language options promise (the C# namespace, the Java
package with `File` as a top-level class, the Objective-C prefix, ...). The Java code, messages
and gRPC stubs, is then compiled with javac against Debian's protobuf-java and grpc-java.

The protoc is Debian's protobuf-compiler: the one grpcio-tools ships has only the Python
generators built in. Go is covered by test_go_client.py (buf generate, go build, a live run).

When protoc, a plugin, javac or the Java libraries are not installed, the tests FAIL in CI
(``CI=true``: .ci/run installs them, so their absence is a bug) and are skipped elsewhere, naming
the Debian packages to install.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import find_programs, prerequisite_missing

ROOT = Path(__file__).resolve().parents[2]
PROTO_FILES = sorted(
    p.relative_to(ROOT / "protos").as_posix() for p in ROOT.glob("protos/**/*.proto")
)
PROTOC_PACKAGES = "protobuf-compiler protobuf-compiler-grpc protobuf-compiler-grpc-java-plugin"
JAVA_PACKAGES = (
    "openjdk-17-jdk-headless protobuf-compiler protobuf-compiler-grpc-java-plugin libprotobuf-java"
    " libgrpc-java libguava-java libgeronimo-annotation-1.3-spec-java"
)
JAVA_LIBRARIES = Path("/usr/share/java")
# What the generated Java needs to compile: the protobuf runtime, grpc-java's API and stubs, Guava
# (the stubs' futures) and javax.annotation.Generated, which the JDK dropped in Java 11.
JAVA_JARS = ("protobuf", "grpc-api", "grpc-stub", "grpc-protobuf", "guava")
JAVAX_ANNOTATION_JAR = "geronimo-annotation-1.3-spec"
JAVAC_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Declaration:
    """A generated file, relative to the output directory, and a pattern it must contain."""

    path: str
    pattern: str


@dataclass(frozen=True)
class Language:
    name: str
    out: str
    """protoc's `--<out>_out` generator."""
    declares: tuple[Declaration, ...]
    """What the messages' generated code must declare."""
    grpc_plugin: str | None = None
    """Debian's gRPC plugin for the language's service stubs, if it packages one."""
    grpc_declares: tuple[Declaration, ...] = ()


LANGUAGES = (
    Language(
        "C++",
        "cpp",
        (Declaration("flightlog/v1/catalog_service.pb.h", r"^class File final :"),),
        "grpc_cpp_plugin",
        (Declaration("flightlog/v1/session_service.grpc.pb.h", r"^class SessionService final \{"),),
    ),
    Language(
        "C#",
        "csharp",
        (
            Declaration("CatalogService.cs", r"^namespace Flightlog\.V1 \{$"),
            Declaration("CatalogService.cs", r"^  public sealed partial class File : "),
        ),
    ),
    Language(
        "Java",
        "java",
        (
            Declaration("com/flightlog/v1/File.java", r"^package com\.flightlog\.v1;$"),
            Declaration("com/flightlog/v1/File.java", r"^public final class File extends"),
            Declaration("com/flightlog/v1/CatalogServiceProto.java", r"^public final class Catal"),
        ),
        "grpc_java_plugin",
        (Declaration("com/flightlog/v1/SessionServiceGrpc.java", r"^public final class Session"),),
    ),
    Language(
        "Kotlin",
        "kotlin",
        (Declaration("com/flightlog/v1/FileKt.kt", r"^package com\.flightlog\.v1;?$"),),
    ),
    Language(
        "Objective-C",
        "objc",
        (Declaration("flightlog/v1/CatalogService.pbobjc.h", r"@interface FXXFile : GPBMessage$"),),
    ),
    Language(
        "PHP",
        "php",
        (
            Declaration("Flightlog/V1/File.php", r"^namespace Flightlog\\V1;$"),
            Declaration("Flightlog/V1/File.php", r"^class File extends "),
        ),
        "grpc_php_plugin",
        (
            Declaration(
                "Flightlog/V1/SessionServiceClient.php", r"^class SessionServiceClient extends "
            ),
        ),
    ),
    Language(
        "Ruby",
        "ruby",
        (Declaration("flightlog/v1/catalog_service_pb.rb", r"^module Flightlog\n  module V1$"),),
        "grpc_ruby_plugin",
        (
            Declaration(
                "flightlog/v1/session_service_services_pb.rb",
                r"^module Flightlog\n  module V1\n    module SessionService$",
            ),
        ),
    ),
    Language(
        "Python",
        "python",
        (Declaration("flightlog/v1/catalog_service_pb2.py", r"AddSerializedFile"),),
    ),
    Language(
        "Python type stubs",
        "pyi",
        (Declaration("flightlog/v1/catalog_service_pb2.pyi", r"^class File\(_message\.Message\)"),),
    ),
)


def _protoc(protoc: str, out: Path, language: Language, *, grpc_plugin: str | None) -> None:
    """Run protoc over every proto file, with the language's generator and gRPC plugin if any."""
    out.mkdir(parents=True)
    argv = [protoc, "-I", "protos", f"--{language.out}_out={out}"]
    if grpc_plugin is not None:
        argv += [f"--plugin=protoc-gen-grpc={grpc_plugin}", f"--grpc_out={out}"]
    result = subprocess.run(
        [*argv, *PROTO_FILES], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, (
        f"protoc --{language.out}_out refused the protos (exit code {result.returncode}):\n"
        f"{result.stderr}"
    )


def _assert_declares(out: Path, declarations: tuple[Declaration, ...]) -> None:
    for declaration in declarations:
        path = out / declaration.path
        generated = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
        assert path.is_file(), f"{declaration.path} was not generated; got {generated[:20]} ..."
        assert re.search(declaration.pattern, path.read_text(), re.MULTILINE), (
            f"{declaration.path} does not match {declaration.pattern!r}"
        )


@pytest.mark.parametrize("language", LANGUAGES, ids=[language.name for language in LANGUAGES])
def test_protoc_generates_every_language_from_the_protos_as_shipped(
    tmp_path: Path, language: Language
) -> None:
    grpc_plugin = None
    if language.grpc_plugin is not None:
        (grpc_plugin,) = find_programs([language.grpc_plugin], PROTOC_PACKAGES)
    (protoc,) = find_programs(["protoc"], PROTOC_PACKAGES)
    help_text = subprocess.run([protoc, "--help"], capture_output=True, text=True, check=False)
    if f"--{language.out}_out" not in help_text.stdout + help_text.stderr:
        prerequisite_missing(f"a protoc with --{language.out}_out", PROTOC_PACKAGES)

    out = tmp_path / language.out
    _protoc(protoc, out, language, grpc_plugin=grpc_plugin)
    _assert_declares(out, language.declares + language.grpc_declares)


def _debian_version(jar: Path) -> str:
    """The version in the file name a Debian jar symlink points to (protobuf-3.21.12.jar)."""
    match = re.fullmatch(r".+-(\d+\.\d+\.\d+)\.jar", jar.resolve().name)
    return match.group(1) if match else ""


@pytest.mark.timeout(2 * JAVAC_TIMEOUT_S)
def test_generated_java_compiles_with_file_a_top_level_class_of_com_flightlog_v1(
    tmp_path: Path,
) -> None:
    protoc, grpc_java_plugin, javac = find_programs(
        ["protoc", "grpc_java_plugin", "javac"], JAVA_PACKAGES
    )
    jars = [JAVA_LIBRARIES / f"{name}.jar" for name in (*JAVA_JARS, JAVAX_ANNOTATION_JAR)]
    for jar in jars:
        if not jar.is_file():
            prerequisite_missing(str(jar), JAVA_PACKAGES)
    # Generated Java compiles against the runtime of its own protoc release, and no other.
    protoc_version = subprocess.run(
        [protoc, "--version"], capture_output=True, text=True, check=True
    ).stdout.split()[-1]
    runtime_version = _debian_version(JAVA_LIBRARIES / "protobuf.jar")
    if protoc_version != runtime_version:
        prerequisite_missing(
            f"a protobuf-java {protoc_version} for protoc {protoc_version}"
            f" ({JAVA_LIBRARIES / 'protobuf.jar'} is {runtime_version or 'of unknown version'})",
            "protobuf-compiler libprotobuf-java",
        )

    sources = tmp_path / "src"
    java = next(language for language in LANGUAGES if language.out == "java")
    _protoc(protoc, sources, java, grpc_plugin=grpc_java_plugin)
    classes = tmp_path / "classes"
    argfile = tmp_path / "sources.txt"
    argfile.write_text("\n".join(str(p) for p in sorted(sources.rglob("*.java"))) + "\n")
    # A short-lived javac: the C1 compiler alone and the serial collector cut its CPU time by
    # about 60 % here; -proc:none since no annotation processor is wanted.
    quick = ["-J-XX:TieredStopAtLevel=1", "-J-XX:+UseSerialGC", "-proc:none", "-implicit:none"]
    result = subprocess.run(
        [javac, *quick, "-d", str(classes), "-cp", ":".join(map(str, jars)), f"@{argfile}"],
        capture_output=True,
        text=True,
        timeout=JAVAC_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, f"javac failed:\n{result.stdout}{result.stderr}"

    package = classes / "com" / "flightlog" / "v1"
    assert (package / "File.class").is_file(), "File is not a top-level class of com.flightlog.v1"
    nested = sorted(p.name for p in classes.rglob("*$File.class"))
    assert nested == [], f"File is also nested in an outer class: {nested}"
    assert (package / "SessionServiceGrpc$SessionServiceBlockingStub.class").is_file()
    assert (package / "CatalogServiceGrpc$CatalogServiceStub.class").is_file()
