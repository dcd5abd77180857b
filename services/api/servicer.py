"""TrainingService servicer: proto in, domain call, proto out. Errors are mapped elsewhere."""

from __future__ import annotations

import asyncio
import functools
import hashlib
from collections.abc import AsyncIterator

import grpc

from bptrain.v1 import training_pb2 as pb
from bptrain.v1 import training_pb2_grpc
from services.api import convert
from services.api.auth import caller
from services.api.followers import Followers
from services.errors import InvalidSpecError
from services.jobs.gradients import check_gradients
from services.jobs.manager import JobManager
from services.jobs.records import JobRecord
from services.jobs.weights import read_chunks
from services.tenancy import Principal

Context = grpc.aio.ServicerContext
MESSAGES_KEPT = 256  # GetJob: jobs whose last answer is kept for their current record

_WEIGHTS_FORMATS = {
    pb.WEIGHTS_FORMAT_UNSPECIFIED: "npz",
    pb.NPZ: "npz",
    pb.SAFETENSORS: "safetensors",
    pb.ONNX: "onnx",
}


def _job_id(job_id: str) -> str:
    if not job_id:
        raise InvalidSpecError("job_id", "is required")
    return job_id


class TrainingServicer(training_pb2_grpc.TrainingServiceServicer):
    """Every handler is a coroutine on the server's event loop; a domain call that blocks
    (SQLite writes and scans, Ray, files, validation) runs in a worker thread
    (`asyncio.to_thread`), and a stream waits without one. A point read of one job
    (GetJob) runs on the loop itself: it reads the store through the loop thread's own
    connection, which never waits for a writer (services/jobs/store.py), in about 50 µs,
    less than the thread hop it saves. So does a SubmitJob that only validates a spec of
    a built-in dataset: no store, no lock, only CPU that the edge bounds (at most 256
    layers and 256-character strings: about 0.1 ms for a usual spec, 1 ms at the
    bounds); one naming an uploaded dataset reads the dataset registry in a thread.
    A job read again before anything is written is the same record (the store keeps it),
    and its message is built once for that record (`_job_message`)."""

    def __init__(self, manager: JobManager, followers: Followers) -> None:
        self.manager = manager
        self.followers = followers
        self._messages: dict[str, tuple[JobRecord, pb.Job]] = {}  # job id: (record, message)

    async def SubmitJob(self, request: pb.SubmitJobRequest, context: Context) -> pb.Job:
        if request.validate_only and not request.spec.dataset.dataset_id:
            return self._submit(request, caller())  # pure CPU, bounded: on the loop
        return await asyncio.to_thread(self._submit, request, caller())

    def _submit(self, request: pb.SubmitJobRequest, principal: Principal) -> pb.Job:
        spec = convert.spec_from_proto(request.spec, self.manager.dataset_lookup(principal))
        if request.validate_only:
            return pb.Job(name=spec.name, spec=convert.spec_to_proto(spec))
        record = self.manager.submit(spec, principal=principal, submission_id=request.submission_id)
        return convert.job_to_proto(record)

    async def GetJob(self, request: pb.GetJobRequest, context: Context) -> pb.Job:
        record = self.manager.get(_job_id(request.job_id), principal=caller())
        return self._job_message(record)

    def _job_message(self, record: JobRecord) -> pb.Job:
        """`convert.job_to_proto(record)`, built once per record object (a polled job's
        record stays one object until the store is written) and shared: it is only
        serialized, never changed."""
        kept = self._messages.get(record.job_id)
        if kept is not None and kept[0] is record:
            return kept[1]
        message = convert.job_to_proto(record)
        if len(self._messages) >= MESSAGES_KEPT:
            self._messages.clear()
        self._messages[record.job_id] = (record, message)
        return message

    async def ListJobs(self, request: pb.ListJobsRequest, context: Context) -> pb.ListJobsResponse:
        records, next_token = await asyncio.to_thread(
            self.manager.list,
            principal=caller(),
            state=convert.state_from_proto(request.state),
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return pb.ListJobsResponse(
            jobs=[convert.job_to_proto(r) for r in records], next_page_token=next_token
        )

    async def CancelJob(self, request: pb.CancelJobRequest, context: Context) -> pb.Job:
        record = await asyncio.to_thread(
            self.manager.cancel, _job_id(request.job_id), principal=caller()
        )
        return convert.job_to_proto(record)

    async def StreamMetrics(
        self, request: pb.StreamMetricsRequest, context: Context
    ) -> AsyncIterator[pb.StreamMetricsResponse]:
        events = self.followers.follow(
            _job_id(request.job_id),
            request.after_step,
            check_access=functools.partial(self.manager.get, principal=caller()),
            batched=request.batched,
        )
        async for event in events:
            yield event

    async def GetWeights(
        self, request: pb.GetWeightsRequest, context: Context
    ) -> AsyncIterator[pb.WeightsChunk]:
        fmt = _WEIGHTS_FORMATS.get(request.format)
        if fmt is None:
            raise InvalidSpecError(
                "format", f"must be NPZ, SAFETENSORS or ONNX, got {request.format}"
            )
        path = await asyncio.to_thread(
            self.manager.weights_file,
            _job_id(request.job_id),
            fmt,
            principal=caller(),
            latest=request.latest,
        )
        digest = hashlib.sha256()
        total = 0
        chunks = read_chunks(path)
        try:
            while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
                digest.update(chunk)
                total += len(chunk)
                yield pb.WeightsChunk(data=chunk)
        finally:
            chunks.close()
        trailer = pb.WeightsTrailer(
            sha256=digest.hexdigest(), total_bytes=total, format=request.format or pb.NPZ
        )
        yield pb.WeightsChunk(trailer=trailer)

    async def UploadDataset(
        self, request_iterator: AsyncIterator[pb.UploadDatasetRequest], context: Context
    ) -> pb.Dataset:
        first = await anext(request_iterator, None)
        if first is None or not first.HasField("header"):
            raise InvalidSpecError("header", "must be the first message of an upload")
        if first.header.format not in (pb.DATASET_FORMAT_UNSPECIFIED, pb.DATASET_NPZ):
            raise InvalidSpecError(
                "header.format", f"must be DATASET_NPZ, got {first.header.format}"
            )
        upload = await asyncio.to_thread(
            self.manager.datasets.begin, first.header.name, principal=caller()
        )
        try:
            async for message in request_iterator:
                if message.HasField("chunk"):
                    await asyncio.to_thread(upload.write, message.chunk)
                elif message.HasField("sha256"):
                    info = await asyncio.to_thread(upload.finish, message.sha256)
                    return convert.dataset_to_proto(info)
                else:
                    raise InvalidSpecError("header", "may only be sent once, first")
            raise InvalidSpecError(
                "sha256", "never arrived: the upload ended early (truncated stream)"
            )
        finally:
            await asyncio.to_thread(upload.discard)

    async def ListDatasets(
        self, request: pb.ListDatasetsRequest, context: Context
    ) -> pb.ListDatasetsResponse:
        infos = await asyncio.to_thread(self.manager.datasets.list, principal=caller())
        return pb.ListDatasetsResponse(datasets=[convert.dataset_to_proto(i) for i in infos])

    async def DeleteDataset(self, request: pb.DeleteDatasetRequest, context: Context) -> pb.Dataset:
        if not request.dataset_id:
            raise InvalidSpecError("dataset_id", "is required")
        info = await asyncio.to_thread(
            self.manager.delete_dataset, request.dataset_id, principal=caller()
        )
        return convert.dataset_to_proto(info)

    async def CheckGradients(self, request: pb.JobSpec, context: Context) -> pb.GradientCheckReport:
        return await asyncio.to_thread(self._check_gradients, request, caller())

    def _check_gradients(self, request: pb.JobSpec, principal: Principal) -> pb.GradientCheckReport:
        spec = convert.spec_from_proto(request, self.manager.dataset_lookup(principal))
        report = check_gradients(spec)
        return pb.GradientCheckReport(
            layer_errors=report.layer_errors,
            worst_error=report.worst_error,
            checked_entries=report.checked_entries,
            passed=report.is_passed,
            tolerance=report.tolerance,
        )
