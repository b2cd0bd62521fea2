from bidviz.cli import main

raise SystemExit(main())
