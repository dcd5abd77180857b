"""Bearer tokens on every RPC (health excepted), TLS and mutual TLS, over real ports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from bptrain import BptrainError, Client
from services.api.auth import TokenAuthInterceptor
from services.api.server import RunningServer, ServerConfig, TlsConfig, create_server
from services.jobs.manager import JobManager, JobsConfig
from services.tenancy import Principal
from tests.certs import make_ca, make_leaf

pytestmark = pytest.mark.slow

TOKEN = "s3cret-token-for-tests-0001"
ADMIN = Principal("admin", is_admin=True)


@pytest.fixture(scope="module")
def manager(ray_session: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[JobManager]:
    manager = JobManager(JobsConfig(storage=tmp_path_factory.mktemp("auth")))
    yield manager
    manager.shutdown()


def serving(manager: JobManager, **config: object) -> RunningServer:
    return create_server(ServerConfig(port=0, **config), manager)


def test_token_check_names_the_principal_of_configured_tokens_only() -> None:
    alice = Principal("alice", is_admin=False)
    interceptor = TokenAuthInterceptor({TOKEN: ADMIN, "alice-token-000000001": alice})
    assert interceptor.principal_of(TOKEN) == ADMIN
    assert interceptor.principal_of("alice-token-000000001") == alice
    assert interceptor.principal_of("") is None
    assert interceptor.principal_of(TOKEN[:-1]) is None
    assert interceptor.principal_of(TOKEN + "x") is None
    assert interceptor.principal_of("t" * 100_000) is None


@pytest.mark.parametrize("token", [None, "wrong-token-000000000000"])
def test_missing_or_wrong_token_is_unauthenticated_on_unary_and_streaming(
    manager: JobManager, token: str | None
) -> None:
    running = serving(manager, principals={TOKEN: ADMIN})
    try:
        with Client(f"127.0.0.1:{running.port}", token=token or "") as client:
            with pytest.raises(BptrainError) as unary:
                list(client.list())
            with pytest.raises(BptrainError) as streaming:
                list(client.metrics("job-anything"))
        assert unary.value.code == "UNAUTHENTICATED"
        assert streaming.value.code == "UNAUTHENTICATED"
    finally:
        running.stop(0)


def test_right_token_passes_and_health_needs_none_but_reflection_does(manager: JobManager) -> None:
    running = serving(manager, principals={TOKEN: ADMIN})
    target = f"127.0.0.1:{running.port}"
    try:
        with Client(target, token=TOKEN) as client:
            assert isinstance(list(client.list()), list)
            with pytest.raises(BptrainError) as caught:
                client.get("job-missing")
            assert caught.value.code == "NOT_FOUND"  # past auth, into the service
        with grpc.insecure_channel(target) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            with pytest.raises(grpc.RpcError) as denied:
                next(reflection.ServerReflectionInfo(iter([request])))
            assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        running.stop(0)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict:
    directory: Path = tmp_path_factory.mktemp("pki")
    ca, ca_cert, ca_key = make_ca(directory, "bptrain-test-ca")
    other_ca, _, _ = make_ca(directory, "some-other-ca")
    server = make_leaf(directory, "server", ca_cert, ca_key)
    client = make_leaf(directory, "client", ca_cert, ca_key)
    return {"ca": ca, "other_ca": other_ca, "server": server, "client": client}


def test_tls_works_with_the_right_ca_and_fails_with_a_wrong_one(
    manager: JobManager, pki: dict
) -> None:
    tls = TlsConfig(cert=pki["server"].cert, key=pki["server"].key)
    running = serving(manager, tls=tls)
    target = f"localhost:{running.port}"
    try:
        with Client(target, tls_ca=pki["ca"].cert, timeout_s=5) as client:
            assert isinstance(list(client.list()), list)
        with Client(target, tls_ca=pki["other_ca"].cert, timeout_s=5) as client:
            with pytest.raises(BptrainError) as caught:
                list(client.list())
            assert caught.value.code == "UNAVAILABLE"
        with Client(target, timeout_s=5) as plaintext, pytest.raises(BptrainError):
            list(plaintext.list())
    finally:
        running.stop(0)


def test_mutual_tls_requires_a_client_certificate(manager: JobManager, pki: dict) -> None:
    tls = TlsConfig(cert=pki["server"].cert, key=pki["server"].key, client_ca=pki["ca"].cert)
    running = serving(manager, tls=tls)
    target = f"localhost:{running.port}"
    try:
        with Client(target, tls_ca=pki["ca"].cert, timeout_s=5) as anonymous:
            with pytest.raises(BptrainError) as caught:
                list(anonymous.list())
            assert caught.value.code == "UNAVAILABLE"
        with Client(
            target,
            tls_ca=pki["ca"].cert,
            tls_cert=pki["client"].cert,
            tls_key=pki["client"].key,
            timeout_s=5,
        ) as known:
            assert isinstance(list(known.list()), list)
    finally:
        running.stop(0)


def test_tls_config_rejects_missing_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        TlsConfig(cert=tmp_path / "nope.crt", key=tmp_path / "nope.key")
