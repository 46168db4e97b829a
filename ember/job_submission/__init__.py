"""Ray's Jobs API: submit a shell command to run as a driver on a cluster, and follow it.

client = JobSubmissionClient("http://127.0.0.1:8265")   # the dashboard's address
submission_id = client.submit_job(entrypoint="python script.py", runtime_env={"env_vars": {...}})
client.get_job_status(submission_id); client.get_job_logs(submission_id)
"""

from ember.job_submission.client import JobSubmissionClient
from ember.job_submission.common import JobInfo, JobStatus

JobDetails = JobInfo  # Ray's REST model; here one class serves both

__all__ = ["JobSubmissionClient", "JobStatus", "JobInfo", "JobDetails"]
