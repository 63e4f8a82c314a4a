"""The `snf` command line (entry point: snf.cli.main:main).

main              the parser: the commands of the modules below, and main()
run_commands      kafka, validate, replay, run, worker
acls_command      kafka acls: a pipeline's ACLs on a secured cluster
deploy_commands   plan, deploy, scale, status, undeploy, logs, supervise,
                  schema, chaos, render
sink_command      sink: outputs into files, or (live) out of interfaces
capture_command   capture: the live capture agent
lab_command       lab up|down|status|exec: namespaces where snf runs inline (snf.live.lab)
top_command       top: live rates and stage times from every worker's /metrics
dlq_command       dlq: a function's dead letters, and --replay
common            what they share: the console, flags, pipeline lookup, brokers
"""
