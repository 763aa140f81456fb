from remind2reg.cli import main

raise SystemExit(main())
