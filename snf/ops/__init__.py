"""Running deployed pipelines.

deploy           plan, create topics, deploy, scale, undeploy
deployment_dir   the deployment directory's files (target, supervisor state, pids)
supervisor       keeps the workers running as the target says
worker_process   one OS process per function instance
autoscale        lag-driven instance counts
status           `snf status`
deployed_chaos   `snf chaos NAME --kill FN`: kill deployed workers in turn
k8s              Kubernetes manifests
"""
