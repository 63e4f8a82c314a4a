from snf.cli.main import main

raise SystemExit(main())
