from snf.cli import main

raise SystemExit(main())
