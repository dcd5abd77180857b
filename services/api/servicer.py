"""TrainingService servicer: proto in, domain call, proto out. Errors are mapped elsewhere."""

from __future__ import annotations

import hashlib

import grpc

from bptrain.v1 import training_pb2 as pb
from bptrain.v1 import training_pb2_grpc
from services.api import convert
from services.errors import InvalidSpecError
from services.jobs.manager import JobManager
from services.jobs.records import JobRecord
from services.jobs.weights import read_chunks


def _job_id(job_id: str) -> str:
    if not job_id:
        raise InvalidSpecError("job_id", "is required")
    return job_id


class TrainingServicer(training_pb2_grpc.TrainingServiceServicer):
    def __init__(self, manager: JobManager) -> None:
        self.manager = manager

    def SubmitJob(self, request: pb.SubmitJobRequest, context: grpc.ServicerContext) -> pb.Job:
        spec = convert.spec_from_proto(request.spec)
        if request.validate_only:
            return pb.Job(name=spec.name, spec=convert.spec_to_proto(spec))
        record = self.manager.submit(spec, submission_id=request.submission_id)
        return convert.job_to_proto(record)

    def GetJob(self, request: pb.GetJobRequest, context: grpc.ServicerContext) -> pb.Job:
        return convert.job_to_proto(self.manager.get(_job_id(request.job_id)))

    def ListJobs(
        self, request: pb.ListJobsRequest, context: grpc.ServicerContext
    ) -> pb.ListJobsResponse:
        records, next_token = self.manager.list(
            state=convert.state_from_proto(request.state),
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return pb.ListJobsResponse(
            jobs=[convert.job_to_proto(r) for r in records], next_page_token=next_token
        )

    def CancelJob(self, request: pb.CancelJobRequest, context: grpc.ServicerContext) -> pb.Job:
        return convert.job_to_proto(self.manager.cancel(_job_id(request.job_id)))

    def StreamMetrics(self, request: pb.StreamMetricsRequest, context: grpc.ServicerContext):
        events = self.manager.follow(
            _job_id(request.job_id), request.after_step, is_active=context.is_active
        )
        for event in events:
            if isinstance(event, JobRecord):
                yield pb.StreamMetricsResponse(final=convert.job_to_proto(event))
            else:
                yield pb.StreamMetricsResponse(point=convert.point_to_proto(event))

    def GetWeights(self, request: pb.GetWeightsRequest, context: grpc.ServicerContext):
        if request.format not in (pb.WEIGHTS_FORMAT_UNSPECIFIED, pb.NPZ):
            raise InvalidSpecError("format", f"must be NPZ, got {request.format}")
        path = self.manager.weights_path(_job_id(request.job_id))
        digest = hashlib.sha256()
        total = 0
        for chunk in read_chunks(path):
            digest.update(chunk)
            total += len(chunk)
            yield pb.WeightsChunk(data=chunk)
        trailer = pb.WeightsTrailer(sha256=digest.hexdigest(), total_bytes=total, format=pb.NPZ)
        yield pb.WeightsChunk(trailer=trailer)
