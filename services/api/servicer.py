"""TrainingService servicer: proto in, domain call, proto out. Errors are mapped elsewhere."""

from __future__ import annotations

import hashlib

import grpc

from bptrain.v1 import training_pb2 as pb
from bptrain.v1 import training_pb2_grpc
from services.api import convert
from services.errors import InvalidSpecError
from services.jobs.gradients import check_gradients
from services.jobs.manager import JobManager
from services.jobs.records import JobRecord
from services.jobs.weights import read_chunks

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
    def __init__(self, manager: JobManager) -> None:
        self.manager = manager

    def SubmitJob(self, request: pb.SubmitJobRequest, context: grpc.ServicerContext) -> pb.Job:
        spec = convert.spec_from_proto(request.spec, self.manager.datasets.get)
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
        fmt = _WEIGHTS_FORMATS.get(request.format)
        if fmt is None:
            raise InvalidSpecError(
                "format", f"must be NPZ, SAFETENSORS or ONNX, got {request.format}"
            )
        path = self.manager.weights_file(_job_id(request.job_id), fmt, latest=request.latest)
        digest = hashlib.sha256()
        total = 0
        for chunk in read_chunks(path):
            digest.update(chunk)
            total += len(chunk)
            yield pb.WeightsChunk(data=chunk)
        trailer = pb.WeightsTrailer(
            sha256=digest.hexdigest(), total_bytes=total, format=request.format or pb.NPZ
        )
        yield pb.WeightsChunk(trailer=trailer)

    def UploadDataset(self, request_iterator, context: grpc.ServicerContext) -> pb.Dataset:
        first = next(request_iterator, None)
        if first is None or not first.HasField("header"):
            raise InvalidSpecError("header", "must be the first message of an upload")
        if first.header.format not in (pb.DATASET_FORMAT_UNSPECIFIED, pb.DATASET_NPZ):
            raise InvalidSpecError(
                "header.format", f"must be DATASET_NPZ, got {first.header.format}"
            )
        upload = self.manager.datasets.begin(first.header.name)
        try:
            for message in request_iterator:
                if message.HasField("chunk"):
                    upload.write(message.chunk)
                elif message.HasField("sha256"):
                    return convert.dataset_to_proto(upload.finish(message.sha256))
                else:
                    raise InvalidSpecError("header", "may only be sent once, first")
            raise InvalidSpecError(
                "sha256", "never arrived: the upload ended early (truncated stream)"
            )
        finally:
            upload.discard()

    def ListDatasets(
        self, request: pb.ListDatasetsRequest, context: grpc.ServicerContext
    ) -> pb.ListDatasetsResponse:
        infos = self.manager.datasets.list()
        return pb.ListDatasetsResponse(datasets=[convert.dataset_to_proto(i) for i in infos])

    def DeleteDataset(
        self, request: pb.DeleteDatasetRequest, context: grpc.ServicerContext
    ) -> pb.Dataset:
        if not request.dataset_id:
            raise InvalidSpecError("dataset_id", "is required")
        return convert.dataset_to_proto(self.manager.delete_dataset(request.dataset_id))

    def CheckGradients(
        self, request: pb.JobSpec, context: grpc.ServicerContext
    ) -> pb.GradientCheckReport:
        spec = convert.spec_from_proto(request, self.manager.datasets.get)
        report = check_gradients(spec)
        return pb.GradientCheckReport(
            layer_errors=report.layer_errors,
            worst_error=report.worst_error,
            checked_entries=report.checked_entries,
            passed=report.is_passed,
            tolerance=report.tolerance,
        )
