from watchgate.cli import main

raise SystemExit(main())
